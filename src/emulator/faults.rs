//! Scriptable faults for the provider emulator. This file owns the fault-spec syntax (parsing,
//! merging the three sources, the `times`/`key` counters) and [`Paced`], the body stream that
//! applies the timing and connection faults. It knows nothing of any provider's wire format:
//! each provider module (OpenAI, Azure, Gemini, Bedrock) turns an [`Active`] fault into its own
//! error bodies and stream frames, so one syntax scripts the same fault for every provider.
//!
//! A spec is `key=value` pairs separated by commas, e.g. `status=429,retry_after=2,times=1`. It
//! can come from the route (`/fault/{spec}/…`), the `x-emulator-fault` header, or a
//! `[emulator:{spec}]` marker anywhere in the raw request body; when several are given they are
//! merged, the later source winning per key in that order (route < header < body), so a single
//! request can override what its route scripts.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::rt::time::{Sleep, sleep};
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::Stream;

/// The request header that carries a fault spec.
pub(crate) const HEADER: &str = "x-emulator-fault";

/// Opening of the in-body marker; the spec runs to the next `]`.
const BODY_MARKER: &[u8] = b"[emulator:";

/// Every key the syntax knows, in the order the canonical form prints them.
const KNOWN_KEYS: [&str; 10] = [
    "status",
    "retry_after",
    "times",
    "key",
    "latency_ms",
    "first_byte_ms",
    "chunk_ms",
    "midstream_error",
    "drop",
    "tokens",
];

/// Upper bound for the millisecond keys: ten minutes is longer than any test should wait, and a
/// typo such as `latency_ms=50000000` should fail loudly rather than hang a suite.
const MAX_DELAY_MS: u64 = 600_000;
/// Upper bound for chunk counts (`midstream_error`, `drop`).
const MAX_CHUNKS: u64 = 1_000_000;
/// Upper bound for `tokens`: enough for long-stream tests, small enough to stay cheap.
pub(crate) const MAX_TOKENS: u64 = 100_000;

/// One parsed fault spec. Every field is optional so specs from several sources can be merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FaultSpec {
    /// Answer with this HTTP status and a provider-shaped error body.
    pub status: Option<u16>,
    /// Seconds for the `retry-after` hints (429 defaults to 1).
    pub retry_after: Option<u64>,
    /// Apply the faults only to the first `times` matching requests.
    pub times: Option<u64>,
    /// Counter name for `times`; defaults to the canonical spec.
    pub key: Option<String>,
    /// Delay before the response headers.
    pub latency_ms: Option<u64>,
    /// Delay between the headers and the first body chunk.
    pub first_byte_ms: Option<u64>,
    /// Delay between body chunks of a stream.
    pub chunk_ms: Option<u64>,
    /// Stream this many content chunks, then a provider error event.
    pub midstream_error: Option<u64>,
    /// Send this many chunks, then abort the connection.
    pub drop: Option<u64>,
    /// Reply length in words (one word = one output token = one stream chunk).
    pub tokens: Option<u64>,
}

/// Where a spec came from; named in the 400 so a test author sees which source was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultSource {
    Path,
    Header,
    Body,
}

impl fmt::Display for FaultSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultSource::Path => "the /fault/{spec}/ path prefix",
            FaultSource::Header => "the x-emulator-fault header",
            FaultSource::Body => "an [emulator:…] marker in the request body",
        })
    }
}

/// Why a spec was refused. Refusing (rather than ignoring) is the point: a test must never run
/// silently without the fault it asked for.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FaultSpecError {
    #[error("the fault spec is empty")]
    Empty,
    #[error("'{0}' is not a key=value pair")]
    NotAPair(String),
    #[error(
        "unknown fault key '{0}' (known keys: status, retry_after, times, key, latency_ms, \
         first_byte_ms, chunk_ms, midstream_error, drop, tokens)"
    )]
    UnknownKey(String),
    #[error("fault key '{0}' is given twice")]
    Duplicate(String),
    #[error("bad value '{value}' for fault key '{key}': expected {expected}")]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("the [emulator: marker has no closing ']'")]
    Unterminated,
    #[error("the fault spec is not valid text")]
    NotText,
}

impl FaultSpec {
    /// Parses one spec (`key=value,key=value`). Strict: empty pairs, unknown keys, duplicates and
    /// out-of-range values are errors.
    pub(crate) fn parse(spec: &str) -> Result<Self, FaultSpecError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(FaultSpecError::Empty);
        }
        let mut out = FaultSpec::default();
        let mut seen = [false; KNOWN_KEYS.len()];
        for pair in spec.split(',') {
            let pair = pair.trim();
            let Some((key, value)) = pair.split_once('=') else {
                return Err(FaultSpecError::NotAPair(pair.to_owned()));
            };
            let (key, value) = (key.trim(), value.trim());
            let Some(slot) = KNOWN_KEYS.iter().position(|k| *k == key) else {
                return Err(FaultSpecError::UnknownKey(key.to_owned()));
            };
            if std::mem::replace(&mut seen[slot], true) {
                return Err(FaultSpecError::Duplicate(key.to_owned()));
            }
            let key = KNOWN_KEYS[slot];
            match key {
                "status" => {
                    // Only error statuses make sense: a fault that "succeeds" with 302 would
                    // leave the test asserting on a body that is not there.
                    let code = number(key, value, 400, 599, "an HTTP status from 400 to 599")?;
                    out.status = u16::try_from(code).ok();
                }
                "retry_after" => {
                    out.retry_after = Some(number(key, value, 0, 86_400, "seconds, 0 to 86400")?)
                }
                "times" => out.times = Some(number(key, value, 1, u64::MAX, "a count >= 1")?),
                "key" => {
                    let ok = !value.is_empty()
                        && value.len() <= 64
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
                    if !ok {
                        return Err(bad(key, value, "1 to 64 of [A-Za-z0-9_.:-]"));
                    }
                    out.key = Some(value.to_owned());
                }
                "latency_ms" => out.latency_ms = Some(delay(key, value)?),
                "first_byte_ms" => out.first_byte_ms = Some(delay(key, value)?),
                "chunk_ms" => out.chunk_ms = Some(delay(key, value)?),
                "midstream_error" => {
                    out.midstream_error = Some(number(key, value, 0, MAX_CHUNKS, "a chunk count")?)
                }
                "drop" => out.drop = Some(number(key, value, 0, MAX_CHUNKS, "a chunk count")?),
                "tokens" => {
                    out.tokens = Some(number(
                        key,
                        value,
                        1,
                        MAX_TOKENS,
                        "a word count, 1 to 100000",
                    )?)
                }
                _ => return Err(FaultSpecError::UnknownKey(key.to_owned())),
            }
        }
        Ok(out)
    }

    /// Overlays `other` on `self`: every key `other` sets wins.
    pub(crate) fn merge(&mut self, other: FaultSpec) {
        fn take<T>(slot: &mut Option<T>, new: Option<T>) {
            if new.is_some() {
                *slot = new;
            }
        }
        take(&mut self.status, other.status);
        take(&mut self.retry_after, other.retry_after);
        take(&mut self.times, other.times);
        take(&mut self.key, other.key);
        take(&mut self.latency_ms, other.latency_ms);
        take(&mut self.first_byte_ms, other.first_byte_ms);
        take(&mut self.chunk_ms, other.chunk_ms);
        take(&mut self.midstream_error, other.midstream_error);
        take(&mut self.drop, other.drop);
        take(&mut self.tokens, other.tokens);
    }

    /// The spec in a fixed key order: the default `times` counter key, so the same fault written
    /// with its keys in another order (or split across sources) counts as the same fault.
    pub(crate) fn canonical(&self) -> String {
        let mut out = String::new();
        let mut push = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(key);
                out.push('=');
                out.push_str(&value);
            }
        };
        push("status", self.status.map(|v| v.to_string()));
        push("retry_after", self.retry_after.map(|v| v.to_string()));
        push("times", self.times.map(|v| v.to_string()));
        push("key", self.key.clone());
        push("latency_ms", self.latency_ms.map(|v| v.to_string()));
        push("first_byte_ms", self.first_byte_ms.map(|v| v.to_string()));
        push("chunk_ms", self.chunk_ms.map(|v| v.to_string()));
        push(
            "midstream_error",
            self.midstream_error.map(|v| v.to_string()),
        );
        push("drop", self.drop.map(|v| v.to_string()));
        push("tokens", self.tokens.map(|v| v.to_string()));
        out
    }

    /// Resolves `times`/`key` against the shared counters and returns what this request must
    /// suffer. `tokens` is a reply shape rather than a failure, so it applies on every request,
    /// including the ones past the `times` budget.
    pub(crate) fn activate(self, counters: &Counters) -> Active {
        let tokens = self.tokens;
        if let Some(times) = self.times {
            let key = self.key.clone().unwrap_or_else(|| self.canonical());
            if counters.hit(key) > times {
                return Active {
                    tokens,
                    ..Active::default()
                };
            }
        }
        Active {
            status: self.status,
            retry_after: self.retry_after,
            latency: self.latency_ms.map(Duration::from_millis),
            first_byte: self.first_byte_ms.map(Duration::from_millis),
            chunk: self.chunk_ms.map(Duration::from_millis),
            midstream_error: self.midstream_error.and_then(|v| usize::try_from(v).ok()),
            drop: self.drop.and_then(|v| usize::try_from(v).ok()),
            tokens,
        }
    }
}

fn bad(key: &'static str, value: &str, expected: &'static str) -> FaultSpecError {
    FaultSpecError::BadValue {
        key,
        value: value.to_owned(),
        expected,
    }
}

fn number(
    key: &'static str,
    value: &str,
    min: u64,
    max: u64,
    expected: &'static str,
) -> Result<u64, FaultSpecError> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(bad(key, value, expected)),
    }
}

fn delay(key: &'static str, value: &str) -> Result<u64, FaultSpecError> {
    number(key, value, 0, MAX_DELAY_MS, "milliseconds, 0 to 600000")
}

/// Gathers and merges the specs of one request. `header` is `Some(Err(()))` when the header is
/// present but not visible ASCII. The body is searched only when it contains the marker, with
/// one `memmem` pass, so fault-free requests (the load tests) pay almost nothing.
pub(crate) fn collect(
    path: Option<&str>,
    header: Option<Result<&str, ()>>,
    body: &[u8],
) -> Result<FaultSpec, (FaultSource, FaultSpecError)> {
    let mut spec = FaultSpec::default();
    if let Some(path) = path {
        spec.merge(FaultSpec::parse(path).map_err(|e| (FaultSource::Path, e))?);
    }
    if let Some(header) = header {
        let header = header.map_err(|()| (FaultSource::Header, FaultSpecError::NotText))?;
        spec.merge(FaultSpec::parse(header).map_err(|e| (FaultSource::Header, e))?);
    }
    let finder = memchr::memmem::Finder::new(BODY_MARKER);
    let mut rest = body;
    while let Some(at) = finder.find(rest) {
        let after = &rest[at + BODY_MARKER.len()..];
        let end =
            memchr::memchr(b']', after).ok_or((FaultSource::Body, FaultSpecError::Unterminated))?;
        let text = std::str::from_utf8(&after[..end])
            .map_err(|_| (FaultSource::Body, FaultSpecError::NotText))?;
        spec.merge(FaultSpec::parse(text).map_err(|e| (FaultSource::Body, e))?);
        rest = &after[end..];
    }
    Ok(spec)
}

/// Request counters for `times`, shared by every worker. Keys are whatever tests name, so the
/// map grows with the number of distinct faults a run scripts, which is small.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits: DashMap<String, u64>,
}

impl Counters {
    /// Counts one request under `key` and returns the count including it (1 for the first).
    pub(crate) fn hit(&self, key: String) -> u64 {
        let mut entry = self.hits.entry(key).or_insert(0);
        *entry = entry.saturating_add(1);
        *entry
    }
}

/// The faults that apply to one request, after `times` gating.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Active {
    pub status: Option<u16>,
    pub retry_after: Option<u64>,
    pub latency: Option<Duration>,
    pub first_byte: Option<Duration>,
    pub chunk: Option<Duration>,
    pub midstream_error: Option<usize>,
    pub drop: Option<usize>,
    pub tokens: Option<u64>,
}

impl Active {
    /// A body stream over ready-made frames that applies this request's timing and drop faults.
    pub(crate) fn pace(&self, frames: Vec<Bytes>) -> Paced {
        Paced {
            frames: frames.into_iter(),
            first_byte: self.first_byte,
            chunk: self.chunk,
            drop_after: self.drop,
            sent: 0,
            sleep: None,
            waited: false,
            flushed: false,
            done: false,
        }
    }

    /// A non-streamed body with the same faults. With `drop`, only the first half of the body
    /// is sent before the connection is aborted; the caller declares the full length, so the
    /// client sees a short body rather than a clean end.
    pub(crate) fn pace_whole(&self, body: Bytes) -> Paced {
        let frames = if self.drop.is_some() {
            vec![body.slice(..body.len() / 2)]
        } else {
            vec![body]
        };
        Paced {
            drop_after: self.drop.map(|_| 1),
            ..self.pace(frames)
        }
    }

    /// Whether the body needs [`Paced`] at all; without these faults a plain body is cheaper.
    pub(crate) fn shapes_body(&self) -> bool {
        self.first_byte.is_some() || self.chunk.is_some() || self.drop.is_some()
    }
}

/// Body stream of pre-built frames: waits `first_byte` before the first frame and `chunk` before
/// each later one, and after `drop_after` frames (or at the end, if there are fewer) yields an
/// error so actix aborts the connection instead of finishing the body. Without faults it is a
/// plain iterator: no timers are created.
pub(crate) struct Paced {
    frames: std::vec::IntoIter<Bytes>,
    first_byte: Option<Duration>,
    chunk: Option<Duration>,
    drop_after: Option<usize>,
    sent: usize,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The delay before the next frame has already elapsed.
    waited: bool,
    /// The stream has returned `Pending` once before its drop error (see [`Paced::drop_now`]).
    flushed: bool,
    done: bool,
}

impl Paced {
    /// The drop error, after one `Pending`. actix discards its unwritten buffer when a body
    /// fails, so erroring straight away would lose the headers and frames meant to go out
    /// first; a `Pending` (with an immediate wake-up) makes it flush them before the abort.
    fn drop_now(&mut self, cx: &Context<'_>) -> Poll<Option<Result<Bytes, io::Error>>> {
        if !self.flushed {
            self.flushed = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.done = true;
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "emulated fault: connection dropped",
        ))))
    }
}

impl Stream for Paced {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let exhausted = this.frames.as_slice().is_empty();
        if this.drop_after.is_some_and(|k| this.sent >= k || exhausted) {
            return this.drop_now(cx);
        }
        if !this.waited && !exhausted {
            let delay = if this.sent == 0 {
                this.first_byte
            } else {
                this.chunk
            };
            if let Some(delay) = delay.filter(|d| !d.is_zero()) {
                let timer = this.sleep.get_or_insert_with(|| Box::pin(sleep(delay)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            this.waited = true;
        }
        let Some(frame) = this.frames.next() else {
            this.done = true;
            return Poll::Ready(None);
        };
        this.sent += 1;
        this.waited = false;
        Poll::Ready(Some(Ok(frame)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::time::Instant;

    #[test]
    fn parses_every_key() {
        let spec = FaultSpec::parse(
            "status=429, retry_after=3,times=2,key=retry-1,latency_ms=5,first_byte_ms=6,\
             chunk_ms=7,midstream_error=2,drop=4,tokens=30",
        )
        .expect("valid spec");
        assert_eq!(
            spec,
            FaultSpec {
                status: Some(429),
                retry_after: Some(3),
                times: Some(2),
                key: Some("retry-1".into()),
                latency_ms: Some(5),
                first_byte_ms: Some(6),
                chunk_ms: Some(7),
                midstream_error: Some(2),
                drop: Some(4),
                tokens: Some(30),
            }
        );
    }

    #[test]
    fn refuses_bad_specs_naming_the_key() {
        let cases: [(&str, FaultSpecError); 9] = [
            ("", FaultSpecError::Empty),
            ("status", FaultSpecError::NotAPair("status".into())),
            ("status=503,", FaultSpecError::NotAPair(String::new())),
            ("statsu=503", FaultSpecError::UnknownKey("statsu".into())),
            ("drop=1,drop=2", FaultSpecError::Duplicate("drop".into())),
            (
                "status=200",
                bad("status", "200", "an HTTP status from 400 to 599"),
            ),
            ("tokens=0", bad("tokens", "0", "a word count, 1 to 100000")),
            (
                "latency_ms=-1",
                bad("latency_ms", "-1", "milliseconds, 0 to 600000"),
            ),
            ("key=a b", bad("key", "a b", "1 to 64 of [A-Za-z0-9_.:-]")),
        ];
        for (spec, want) in cases {
            assert_eq!(FaultSpec::parse(spec), Err(want), "spec {spec:?}");
        }
        let message = FaultSpecError::UnknownKey("statsu".into()).to_string();
        assert!(message.contains("'statsu'"), "{message}");
    }

    #[test]
    fn merges_sources_later_wins() {
        let spec = collect(
            Some("status=503,tokens=3"),
            Some(Ok("status=429")),
            br#"{"messages":[{"content":"hi [emulator:tokens=7,drop=1] there"}]}"#,
        )
        .expect("valid");
        assert_eq!(spec.status, Some(429));
        assert_eq!(spec.tokens, Some(7));
        assert_eq!(spec.drop, Some(1));
    }

    #[test]
    fn body_marker_errors_name_the_source() {
        assert_eq!(
            collect(None, None, b"x [emulator:status=503"),
            Err((FaultSource::Body, FaultSpecError::Unterminated))
        );
        assert_eq!(
            collect(None, None, b"[emulator:bogus=1]"),
            Err((
                FaultSource::Body,
                FaultSpecError::UnknownKey("bogus".into())
            ))
        );
        assert_eq!(
            collect(None, Some(Err(())), b""),
            Err((FaultSource::Header, FaultSpecError::NotText))
        );
        assert_eq!(collect(None, None, b"no marker"), Ok(FaultSpec::default()));
    }

    #[test]
    fn canonical_ignores_key_order() {
        let a = FaultSpec::parse("times=1,status=503").expect("valid");
        let b = FaultSpec::parse("status=503,times=1").expect("valid");
        assert_eq!(a.canonical(), "status=503,times=1");
        assert_eq!(a.canonical(), b.canonical());
    }

    #[test]
    fn times_counts_per_key() {
        let counters = Counters::default();
        let once = || FaultSpec::parse("status=503,times=1,key=a").expect("valid");
        assert_eq!(once().activate(&counters).status, Some(503));
        assert_eq!(once().activate(&counters).status, None);
        assert_eq!(once().activate(&counters).status, None);

        // Another key has its own budget.
        let other = FaultSpec::parse("status=503,times=2,key=b").expect("valid");
        assert_eq!(other.clone().activate(&counters).status, Some(503));
        assert_eq!(other.clone().activate(&counters).status, Some(503));
        assert_eq!(other.activate(&counters).status, None);

        // Without `key`, the canonical spec is the key, whatever the order it was written in.
        let first = FaultSpec::parse("times=1,status=500").expect("valid");
        let second = FaultSpec::parse("status=500,times=1").expect("valid");
        assert_eq!(first.activate(&counters).status, Some(500));
        assert_eq!(second.activate(&counters).status, None);

        // `tokens` keeps applying after the budget is spent.
        let shaped = || FaultSpec::parse("status=502,times=1,key=c,tokens=4").expect("valid");
        assert_eq!(shaped().activate(&counters).status, Some(502));
        let later = shaped().activate(&counters);
        assert_eq!((later.status, later.tokens), (None, Some(4)));
    }

    fn frames(n: usize) -> Vec<Bytes> {
        (0..n).map(|i| Bytes::from(format!("f{i}"))).collect()
    }

    #[actix_web::test]
    async fn paced_passes_frames_through_without_faults() {
        let got: Vec<_> = Active::default().pace(frames(3)).collect().await;
        let got: Vec<_> = got.into_iter().map(|r| r.expect("no error")).collect();
        assert_eq!(got, frames(3));
    }

    #[actix_web::test]
    async fn paced_drop_errors_after_k_frames() {
        let active = Active {
            drop: Some(2),
            ..Active::default()
        };
        let got: Vec<_> = active.pace(frames(5)).collect().await;
        assert_eq!(got.len(), 3);
        assert!(got[..2].iter().all(Result::is_ok));
        assert!(got[2].is_err());

        // Fewer frames than `drop`: still ends with an abort, never a clean end.
        let got: Vec<_> = active.pace(frames(1)).collect().await;
        assert_eq!(got.len(), 2);
        assert!(got[1].is_err());

        // Whole bodies are cut in half.
        let got: Vec<_> = active
            .pace_whole(Bytes::from_static(b"0123456789"))
            .collect()
            .await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().ok(), Some(&Bytes::from_static(b"01234")));
        assert!(got[1].is_err());
    }

    #[actix_web::test]
    async fn paced_waits_between_frames() {
        let active = Active {
            first_byte: Some(Duration::from_millis(40)),
            chunk: Some(Duration::from_millis(20)),
            ..Active::default()
        };
        let start = Instant::now();
        let got: Vec<_> = active.pace(frames(3)).collect().await;
        assert_eq!(got.len(), 3);
        assert!(
            start.elapsed() >= Duration::from_millis(80),
            "{:?}",
            start.elapsed()
        );
    }
}
