//! SigV4 verification for the Bedrock routes: parses the `Authorization: AWS4-HMAC-SHA256 …`
//! header, checks the credential scope (the known access key, the configured region, service
//! `bedrock`; any region when configured with [`super::super::ANY_BEDROCK_REGION`]), the clock skew AWS allows (5 minutes) and the session token, then re-signs the
//! request exactly as received (method, raw path and query, the headers it says it signed, the
//! body) with `aws-sigv4` and the known secret, and compares signatures. Re-signing with the
//! same crate a gateway is expected to use is deliberate: the emulator then accepts precisely
//! what AWS would, including the double-encoded `%3A` of a model id in the canonical path.
//! Refusals come back as [`Refusal`]s; `mod.rs` words them in Bedrock's error shape.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::HttpRequest;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

/// The SigV4 service name of bedrock-runtime (not `bedrock-runtime`).
pub(super) const SERVICE: &str = "bedrock";
/// How far a request's `x-amz-date` may be from the emulator's clock, as at AWS.
const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// The credentials the emulator knows.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The only `x-amz-security-token` accepted when a request carries one.
    pub session_token: String,
    pub region: String,
}

/// Why a signed request was refused; each maps to one AWS exception.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `MissingAuthenticationTokenException`: no credentials at all.
    Missing,
    /// `IncompleteSignatureException`: the header is not a SigV4 header.
    Incomplete(String),
    /// `UnrecognizedClientException`: unknown access key or session token.
    Unrecognized,
    /// `InvalidSignatureException`, with AWS's message.
    Invalid(String),
}

/// What the signature of AWS's error message says when the secret or the signed bytes differ.
pub(super) const MISMATCH: &str = "The request signature we calculated does not match the \
    signature you provided. Check your AWS Secret Access Key and signing method. Consult the \
    service documentation for details.";

/// The parsed `Authorization` header.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, Refusal> {
    let incomplete = |what: &str| {
        Refusal::Incomplete(format!(
            "Authorization header requires '{what}' parameter. Authorization={value}"
        ))
    };
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| Refusal::Incomplete(format!("Unsupported authorization scheme: {value}")))?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',').map(str::trim) {
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or_else(|| incomplete("Credential"))?;
    let signed = signed.ok_or_else(|| incomplete("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| incomplete("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope.as_slice() else {
        return Err(Refusal::Incomplete(format!(
            "Credential should be scoped to a valid region, service and terminal: {credential}"
        )));
    };
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

/// Verifies the request's SigV4 signature over `body` against `keys`, at `now`.
pub(super) fn verify(
    req: &HttpRequest,
    body: &[u8],
    keys: &Keys,
    now: SystemTime,
) -> Result<(), Refusal> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let value = header("authorization").ok_or(Refusal::Missing)?;
    let auth = parse_authorization(value)?;
    if auth.access_key_id != keys.access_key_id {
        return Err(Refusal::Unrecognized);
    }
    let token = header("x-amz-security-token");
    if token.is_some_and(|t| t != keys.session_token) {
        return Err(Refusal::Unrecognized);
    }
    if auth.service != SERVICE {
        return Err(Refusal::Invalid(format!(
            "Credential should be scoped to correct service: '{SERVICE}'. "
        )));
    }
    // AWS checks the scope's region against the regional endpoint called. Standing in for
    // every region (`serve --emulator`, where tenants name their own), the emulator takes the
    // scope's region as the endpoint's and still verifies the signature with it.
    let region = if keys.region == super::super::ANY_BEDROCK_REGION {
        auth.region
    } else if auth.region != keys.region {
        return Err(Refusal::Invalid(format!(
            "Credential should be scoped to a valid region. This region is {}, not '{}'.",
            keys.region, auth.region
        )));
    } else {
        keys.region.as_str()
    };
    let amz_date = header("x-amz-date").ok_or_else(|| {
        Refusal::Incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' \
             header."
                .to_owned(),
        )
    })?;
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
        Refusal::Incomplete(format!(
            "Date must be in ISO-8601 'basic format'. Got '{amz_date}'."
        ))
    })?;
    if !amz_date.starts_with(auth.date) {
        return Err(Refusal::Invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from \
             HTTP: '{}' != '{}', from '{amz_date}'.",
            auth.date,
            amz_date.get(..8).unwrap_or_default()
        )));
    }
    let skew = now
        .duration_since(signed_at)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    if skew > MAX_SKEW {
        let early = signed_at < now;
        let limit = if early {
            now - MAX_SKEW
        } else {
            now + MAX_SKEW
        };
        return Err(Refusal::Invalid(format!(
            "Signature {} {amz_date} is now {} than {} ({} {} 5 min.)",
            if early {
                "expired:"
            } else {
                "not yet current:"
            },
            if early { "earlier" } else { "later" },
            format_amz_date(limit),
            format_amz_date(now),
            if early { "-" } else { "+" },
        )));
    }
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.contains(&required) {
            return Err(Refusal::Invalid(MISMATCH.to_owned()));
        }
    }

    // Re-sign what arrived: the raw request target, the headers the client says it signed
    // (x-amz-date and the token are added back by the signer itself), and the body.
    let mut headers = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        if matches!(*name, "x-amz-date" | "x-amz-security-token") {
            continue;
        }
        let value = header(name).ok_or_else(|| Refusal::Invalid(MISMATCH.to_owned()))?;
        headers.push((*name, value));
    }
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned());
    let identity = Credentials::new(
        keys.access_key_id.clone(),
        keys.secret_access_key.clone(),
        token.map(str::to_owned),
        None,
        "switchyard-emulator",
    )
    .into();
    let mut settings = SigningSettings::default();
    // The client chose what to sign; excluding nothing lets a signed header count as signed.
    settings.excluded_headers = None;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(signed_at)
        .settings(settings)
        .build()
        .map_err(|e| Refusal::Invalid(e.to_string()))?
        .into();
    let request = SignableRequest::new(
        req.method().as_str(),
        target,
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| Refusal::Invalid(e.to_string()))?;
    let expected = sign(request, &params)
        .map_err(|e| Refusal::Invalid(e.to_string()))?
        .into_parts()
        .1;
    if expected == auth.signature {
        Ok(())
    } else {
        Err(Refusal::Invalid(MISMATCH.to_owned()))
    }
}

/// `20231114T221320Z` → the instant it names (UTC).
pub(crate) fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// The inverse of [`parse_amz_date`], for error messages.
pub(crate) fn format_amz_date(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let secs = i64::try_from(secs).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_round_trip() {
        let t = parse_amz_date("20231114T221320Z").expect("valid");
        assert_eq!(
            t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).ok(),
            Some(1_700_000_000)
        );
        assert_eq!(format_amz_date(t), "20231114T221320Z");
        assert_eq!(format_amz_date(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(parse_amz_date("2023-11-14T22:13:20Z"), None);
        assert_eq!(parse_amz_date("20231314T221320Z"), None);
        let leap = parse_amz_date("20240229T000000Z").expect("leap day");
        assert_eq!(format_amz_date(leap), "20240229T000000Z");
    }

    #[test]
    fn authorization_header_parts() {
        let auth = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKID/20231114/us-east-1/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature=abc",
        )
        .map_err(|e| format!("{e:?}"))
        .expect("parses");
        assert_eq!(
            (
                auth.access_key_id,
                auth.date,
                auth.region,
                auth.service,
                auth.signature
            ),
            ("AKID", "20231114", "us-east-1", "bedrock", "abc")
        );
        assert_eq!(auth.signed_headers, ["content-type", "host", "x-amz-date"]);
        assert!(matches!(
            parse_authorization("AWS4-HMAC-SHA256 Credential=AKID/x/y/z/aws4_request"),
            Err(Refusal::Incomplete(_))
        ));
        assert!(matches!(
            parse_authorization("Basic Zm9v"),
            Err(Refusal::Incomplete(_))
        ));
    }
}
