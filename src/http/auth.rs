//! Tenant authentication: a bearer key, checked against the tenant named in the URL.
//!
//! The token is hashed once (SHA-256) and compared with every key digest of the tenant in
//! constant time. An unknown tenant and a key of another tenant get exactly the same 401 as a
//! wrong key, so the answer never tells whether a tenant exists.

use crate::actors::directory::{Directory, TenantEntry};
use crate::error::GatewayError;
use actix_web::http::header::{self, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A request that proved it belongs to a tenant.
#[derive(Debug)]
pub struct Authenticated<'d> {
    pub entry: &'d TenantEntry,
    /// The name of the key used, for usage records.
    pub key_name: &'d str,
}

/// Checks the bearer key against tenant `tenant`.
pub fn authenticate<'d>(
    dir: &'d Directory,
    tenant: &str,
    headers: &HeaderMap,
) -> Result<Authenticated<'d>, GatewayError> {
    if headers.get_all(header::AUTHORIZATION).nth(1).is_some() {
        // Proxies and servers disagree on which copy wins; refuse rather than guess.
        return Err(GatewayError::invalid(
            "Send exactly one Authorization header.",
            None,
            Some("duplicate_authorization_header"),
        ));
    }
    let token = bearer(headers).ok_or(GatewayError::MissingApiKey)?;
    let digest: [u8; 32] = Sha256::digest(token).into();
    let entry = dir.tenants.get(tenant).ok_or(GatewayError::InvalidApiKey)?;
    // Compare with every key, not stopping at the first match, so timing says nothing either.
    let mut found = None;
    for key in &entry.tenant.keys {
        if bool::from(key.digest.ct_eq(&digest)) {
            found = Some(key.name.as_str());
        }
    }
    found
        .map(|key_name| Authenticated { entry, key_name })
        .ok_or(GatewayError::InvalidApiKey)
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn headers(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let mut h = headers("Bearer a");
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        let dir = Directory::default();
        match authenticate(&dir, "t", &h) {
            Err(GatewayError::InvalidRequest { code, .. }) => {
                assert_eq!(code, Some("duplicate_authorization_header"))
            }
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn reads_bearer_tokens_case_insensitively() {
        assert_eq!(bearer(&headers("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&headers("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
