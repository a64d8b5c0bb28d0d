//! The end of every request: one access-log line and the request metrics.
//!
//! The HTTP middleware starts a [`Pending`] when a request arrives; the data-plane handler
//! notes what it learns on the way ([`note_proxy`], [`note_route`], [`note_upstream`]: names
//! from configuration only); when the response is ready the middleware wraps its body in an
//! [`AccessBody`], which finishes the record when the last byte has been handed to the
//! connection, or when the body is dropped unfinished (the client went away). A stream is
//! therefore logged and measured at its end, with its time to first byte and the tokens of the
//! provider's `usage` report, noted by the data plane, which reads it for the ledger (a whole
//! answer's before it goes out, a stream's or a translated answer's as it passes,
//! [`token_slot`]): the body is not read for it a second time. The line names the request,
//! never a key or a prompt.

use super::metrics::{EndpointLabel, ErrorLabel, FinishedRequest, RouteLabels, metrics};
use super::names;
use super::otel::Trace;
use crate::error::ErrorSource;
use actix_web::HttpMessage;
use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::ServiceResponse;
use bytes::{Bytes, BytesMut};
use memchr::memmem::{Finder, FinderRev};
use opentelemetry::trace::SpanKind;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How much of a body's end is kept to find the finish reason in (traces only).
const TAIL_BYTES: usize = 4096;
/// How much of a body's start is kept to find the response model in (traces only).
const HEAD_BYTES: usize = 1024;

/// What the data plane learns about a request, kept in its extensions.
#[derive(Clone, Debug, Default)]
pub struct RequestRecord {
    pub route: RouteLabels,
    /// Time spent waiting on the provider actor's answer (retries included).
    pub upstream: Option<Duration>,
    /// Input and output tokens of a whole answer's usage, when the data plane read it.
    pub tokens: Option<(u64, u64)>,
    /// Where a translated answer's or a stream's usage is noted when it passes ([`token_slot`]).
    pub token_slot: Option<TokenSlot>,
    /// The data plane put the answer's response model and finish reason on the trace (it had
    /// the body whole), so the body's start and end need not be kept for them.
    pub answer_traced: bool,
}

/// An answer's input and output tokens, noted when the provider's report passes, which for a
/// stream is after the response headers (the usage the gateway asked for on the client's behalf
/// never reaches the body, so it could not be read there).
#[derive(Clone, Debug, Default)]
pub struct TokenSlot(Arc<OnceLock<(u64, u64)>>);

impl TokenSlot {
    pub fn note(&self, input: u64, output: u64) {
        let _ = self.0.set((input, output));
    }
}

fn with_record(req: &actix_web::HttpRequest, f: impl FnOnce(&mut RequestRecord)) {
    let mut ext = req.extensions_mut();
    match ext.get_mut::<RequestRecord>() {
        Some(r) => f(r),
        None => {
            let mut r = RequestRecord::default();
            f(&mut r);
            ext.insert(r);
        }
    }
}

/// The request was authenticated for this tenant and proxy (both from configuration).
pub fn note_proxy(req: &actix_web::HttpRequest, tenant: &str, proxy: &str) {
    with_record(req, |r| {
        r.route.tenant = tenant.into();
        r.route.proxy = proxy.into();
    });
}

/// The request was routed to this route (its configured name).
pub fn note_route(req: &actix_web::HttpRequest, route: &str) {
    with_record(req, |r| r.route.route = route.into());
}

/// The provider answered (or failed) after `took`.
pub fn note_upstream(req: &actix_web::HttpRequest, took: Duration) {
    with_record(req, |r| r.upstream = Some(took));
}

/// A whole answer `body`, read by the data plane for the ledger: its `tokens` (input, output)
/// when it reports them, and, when the request's trace is exported, its response model and
/// finish reason, set on the trace here from the body in place. The body's start and end then
/// need not be copied as it passes and searched at its end. `chat_usage_at` is where the
/// usage reader found a chat answer's top-level `usage` value ([`whole_answer_facts`]).
pub fn note_answer(
    req: &actix_web::HttpRequest,
    tokens: Option<(u64, u64)>,
    trace: &Trace,
    body: &[u8],
    chat_usage_at: Option<usize>,
) {
    let traced = trace.is_exported();
    if traced {
        let (model, finish_reason) = whole_answer_facts(body, chat_usage_at);
        trace.set(|a| answer_attributes(a, model, finish_reason));
    }
    if tokens.is_some() || traced {
        with_record(req, |r| {
            if tokens.is_some() {
                r.tokens = tokens;
            }
            r.answer_traced = traced;
        });
    }
}

/// Where this request's answer notes its tokens when they are known only after the handler
/// returns (a stream's) or in a form other than the body's (a translated answer's).
pub fn token_slot(req: &actix_web::HttpRequest) -> TokenSlot {
    let mut slot = None;
    with_record(req, |r| {
        slot = Some(r.token_slot.get_or_insert_default().clone())
    });
    slot.unwrap_or_default()
}

/// A request being served; dropped without [`Pending::respond`] means the client went away
/// before the response headers (logged with status 499).
pub struct Pending {
    started: Instant,
    request_id: String,
    trace_id: String,
    endpoint: EndpointLabel,
    /// The request's server span when its trace is exported: it ends (and is exported) when
    /// the record finishes.
    trace: Trace,
    done: bool,
}

impl Pending {
    /// Starts the record of a request.
    pub fn start(request_id: &[u8], traceparent: &str, path: &str, trace: Trace) -> Self {
        metrics().request_started();
        Self {
            started: Instant::now(),
            request_id: super::context::id_text(request_id),
            // `00-<trace id>-<span id>-<flags>`
            trace_id: traceparent.get(3..35).unwrap_or_default().to_owned(),
            endpoint: EndpointLabel::classify(path),
            trace,
            done: false,
        }
    }

    /// The response is ready: its body finishes the record.
    pub fn respond<B: MessageBody>(
        mut self,
        res: ServiceResponse<B>,
    ) -> ServiceResponse<AccessBody<B>> {
        self.done = true;
        let record = res
            .request()
            .extensions_mut()
            .remove::<RequestRecord>()
            .unwrap_or_default();
        let status = res.status().as_u16();
        let source = res.response().extensions().get::<ErrorSource>().copied();
        let streaming = res
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        // Usage is read only where a provider reported it: a successful conversation.
        let scan = self.endpoint.is_conversation() && res.status().is_success();
        // The answer's model and finish reason are still to be read from the body.
        let answer_untraced = self.trace.is_exported() && !record.answer_traced;
        let headers_at = self.started.elapsed();
        let finish = Finish {
            started: self.started,
            request_id: std::mem::take(&mut self.request_id),
            trace_id: std::mem::take(&mut self.trace_id),
            endpoint: self.endpoint,
            status,
            error: ErrorLabel::of(status, source),
            overhead: record.upstream.map(|up| headers_at.saturating_sub(up)),
            upstream: record.upstream,
            route: record.route,
            streaming,
            first_byte: None,
            bytes: 0,
            // The start holds the response model, the end the finish reason.
            tail: (scan && answer_untraced).then(BytesMut::new),
            tokens: record.tokens,
            token_slot: record.token_slot,
            head: (scan && answer_untraced).then(BytesMut::new),
            answer_traced: record.answer_traced,
            trace: std::mem::take(&mut self.trace),
        };
        let trace = finish.trace.clone();
        // A stream's tail, from its headers to its last byte, is a span of its own.
        let stream = if streaming {
            trace.child(names::SPAN_STREAM, SpanKind::Internal, 0, |_| {})
        } else {
            Trace::default()
        };
        res.map_body(|_, body| AccessBody {
            // An empty body may be dropped without ever being polled: that is its end.
            empty: matches!(body.size(), BodySize::None | BodySize::Sized(0)),
            inner: Some(body),
            finish: Some(finish),
            stream,
            trace,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let finish = Finish {
            started: self.started,
            request_id: std::mem::take(&mut self.request_id),
            trace_id: std::mem::take(&mut self.trace_id),
            endpoint: self.endpoint,
            status: 499,
            error: ErrorLabel::Client,
            overhead: None,
            upstream: None,
            route: RouteLabels::default(),
            streaming: false,
            first_byte: None,
            bytes: 0,
            tokens: None,
            token_slot: None,
            tail: None,
            head: None,
            answer_traced: false,
            trace: std::mem::take(&mut self.trace),
        };
        finish.emit(false);
    }
}

/// Everything the access line and the metrics need, gathered until the last byte.
struct Finish {
    started: Instant,
    request_id: String,
    trace_id: String,
    endpoint: EndpointLabel,
    status: u16,
    error: ErrorLabel,
    overhead: Option<Duration>,
    upstream: Option<Duration>,
    route: RouteLabels,
    streaming: bool,
    first_byte: Option<Duration>,
    bytes: u64,
    /// The answer's usage (input, output), when the data plane read it.
    tokens: Option<(u64, u64)>,
    token_slot: Option<TokenSlot>,
    /// The body's last bytes, when the trace wants the finish reason.
    tail: Option<BytesMut>,
    /// The body's first bytes, when traces want the response model.
    head: Option<BytesMut>,
    /// The response model and finish reason are on the trace already ([`note_answer`]).
    answer_traced: bool,
    trace: Trace,
}

impl Finish {
    fn chunk(&mut self, bytes: &Bytes) {
        if self.first_byte.is_none() {
            self.first_byte = Some(self.started.elapsed());
        }
        self.bytes += bytes.len() as u64;
        if let Some(head) = &mut self.head
            && head.len() < HEAD_BYTES
        {
            let take = (HEAD_BYTES - head.len()).min(bytes.len());
            head.extend_from_slice(&bytes[..take]);
        }
        if let Some(tail) = &mut self.tail {
            if bytes.len() >= TAIL_BYTES {
                tail.clear();
                tail.extend_from_slice(&bytes[bytes.len() - TAIL_BYTES..]);
            } else {
                let keep = TAIL_BYTES - bytes.len();
                if tail.len() > keep {
                    let _ = tail.split_to(tail.len() - keep);
                }
                tail.extend_from_slice(bytes);
            }
        }
    }

    /// The request span's closing attributes: status, usage, response model, finish reason.
    fn trace(&self, tokens: Option<(u64, u64)>) {
        let (model, finish_reason) = if self.answer_traced {
            (None, None)
        } else {
            answer_facts(
                self.head.as_deref().unwrap_or_default(),
                self.tail.as_deref().unwrap_or_default(),
                self.streaming,
            )
        };
        let failed = (self.status >= 500).then_some("server error");
        self.trace.set_and_fail(
            |a| {
                a.int(names::HTTP_RESPONSE_STATUS_CODE, i64::from(self.status));
                if let Some((input, output)) = tokens {
                    a.int(names::GEN_AI_USAGE_INPUT_TOKENS, input as i64);
                    a.int(names::GEN_AI_USAGE_OUTPUT_TOKENS, output as i64);
                }
                answer_attributes(a, model, finish_reason);
            },
            failed,
        );
    }

    fn emit(self, complete: bool) {
        let total = self.started.elapsed();
        let tokens = self
            .tokens
            .or_else(|| self.token_slot.as_ref().and_then(|t| t.0.get().copied()));
        let ttft = self.first_byte.filter(|_| self.streaming);
        metrics().request_finished(&FinishedRequest {
            route: &self.route,
            endpoint: self.endpoint,
            status: self.status,
            error: self.error,
            total,
            ttft,
            overhead: self.overhead,
            tokens,
        });
        if self.trace.is_exported() {
            self.trace(tokens);
        }
        let ms = |d: Option<Duration>| d.map(|d| tracing::field::display(Ms(d)));
        // Outside any span: the line carries its own fields, once.
        tracing::info!(
            target: "switchyard::access",
            parent: None,
            request_id = %self.request_id,
            trace_id = %self.trace_id,
            tenant = %self.route.tenant,
            proxy = %self.route.proxy,
            route = %self.route.route,
            endpoint = self.endpoint.as_str(),
            status = self.status,
            error = self.error.as_str(),
            latency_ms = %Ms(total),
            ttft_ms = ms(ttft),
            upstream_ms = ms(self.upstream),
            input_tokens = tokens.map(|t| t.0),
            output_tokens = tokens.map(|t| t.1),
            bytes = self.bytes,
            complete,
            "access"
        );
    }
}

/// Milliseconds with microsecond precision, for the log.
struct Ms(Duration);

impl std::fmt::Display for Ms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3}", self.0.as_secs_f64() * 1000.0)
    }
}

/// A response body that finishes its request's record at its end.
pub struct AccessBody<B> {
    /// Taken only on drop, to drop it first.
    inner: Option<B>,
    finish: Option<Finish>,
    /// A stream's span, then the request's server span, ended in that order after the body.
    stream: Trace,
    trace: Trace,
    empty: bool,
}

impl<B> Drop for AccessBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away mid-body (or there was nothing to send).
        if let Some(finish) = self.finish.take() {
            finish.emit(self.empty);
        }
        // The body goes first, then the stream's span, then the server span: an OTel span
        // ends when its last handle goes, so the server span ends after its children, with
        // the last byte, not when the handler returned.
        drop(self.inner.take());
        drop(std::mem::take(&mut self.stream));
        drop(std::mem::take(&mut self.trace));
    }
}

impl<B: MessageBody + Unpin> MessageBody for AccessBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.inner
            .as_ref()
            .map_or(BodySize::None, MessageBody::size)
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(bytes))) => {
                if let Some(f) = &mut this.finish {
                    f.chunk(bytes);
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = this.finish.take() {
                    f.emit(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(f) = this.finish.take() {
                    f.emit(false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }
}

/// Searchers built once: building one per search was a visible item of the request path's
/// CPU profile (`memmem::Searcher::new`).
static FINISH_REASON: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"finish_reason\""));
static FINISH_REASON_REV: LazyLock<FinderRev<'static>> =
    LazyLock::new(|| FinderRev::new(b"\"finish_reason\""));
static MODEL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"model\""));
/// The response model (the first `"model"` in `head`, else in `tail`) and the last finish
/// reason in `tail`, of an answer whose first and last bytes these are.
fn answer_facts<'a>(
    head: &'a [u8],
    tail: &'a [u8],
    streaming: bool,
) -> (Option<&'a str>, Option<&'a str>) {
    let finish_reason = last_finish_reason(tail, streaming)
        .and_then(|at| string_value(&tail[at + FINISH_REASON.needle().len()..]));
    (response_model(head, tail), finish_reason)
}

/// The response model: the first `"model"` in an answer's `head`, else in its `tail`.
fn response_model<'a>(head: &'a [u8], tail: &'a [u8]) -> Option<&'a str> {
    string_after(head, &MODEL).or_else(|| string_after(tail, &MODEL))
}

/// How far before a chat answer's `usage` its last finish reason is looked for first.
const BEFORE_USAGE: usize = 256;

/// [`answer_facts`] of a whole answer `body`, whose top-level `usage` value a chat answer's
/// usage reader found at `chat_usage_at`. Chat answers (OpenAI's, Azure's) put `usage` after
/// `choices`, and OpenAI's choice ends with its finish reason: the last one is then found by
/// a short backward search from `usage`, not a forward one through the whole tail (and a
/// second, to be sure it is the last). Where it is not that close, the tail is searched.
fn whole_answer_facts(body: &[u8], chat_usage_at: Option<usize>) -> (Option<&str>, Option<&str>) {
    let head = &body[..body.len().min(HEAD_BYTES)];
    let tail = &body[body.len().saturating_sub(TAIL_BYTES)..];
    let before_usage = chat_usage_at.and_then(|at| {
        let from = at.saturating_sub(BEFORE_USAGE).max(body.len() - tail.len());
        Some(from + rfind_finish_reason(body.get(from..at)?)?)
    });
    match before_usage {
        Some(at) => (
            response_model(head, tail),
            string_value(&body[at + FINISH_REASON.needle().len()..]),
        ),
        None => answer_facts(head, tail, false),
    }
}

/// Where the last `"finish_reason"` in `hay` starts, found backwards by its `f` (the
/// substring searcher set itself up on every backward search, which cost more here).
fn rfind_finish_reason(hay: &[u8]) -> Option<usize> {
    let needle = FINISH_REASON.needle();
    let mut end = hay.len();
    while let Some(f) = memchr::memrchr(b'f', &hay[..end]) {
        if f > 0 && hay[f - 1..].starts_with(needle) {
            return Some(f - 1);
        }
        end = f;
    }
    None
}

/// [`answer_facts`] as the request span's attributes.
fn answer_attributes(
    a: &mut super::otel::Attributes,
    model: Option<&str>,
    finish_reason: Option<&str>,
) {
    if let Some(m) = model {
        a.str(names::GEN_AI_RESPONSE_MODEL, m);
    }
    if let Some(r) = finish_reason {
        a.strs(names::GEN_AI_RESPONSE_FINISH_REASONS, &[r]);
    }
}

/// Where the last `"finish_reason"` in `tail` starts. A stream's tail holds one per chunk and
/// the last is near its end: searched backwards. A whole answer holds one per choice, before
/// its `usage`: the forward search (vectorised, unlike the backward one) over the whole tail
/// costs less than the backward one over the usage object.
fn last_finish_reason(tail: &[u8], streaming: bool) -> Option<usize> {
    if streaming {
        FINISH_REASON_REV.rfind(tail)
    } else {
        FINISH_REASON.find_iter(tail).last()
    }
}

/// The short string value after the first `"key"` (what `key` finds) in `hay`.
fn string_after<'h>(hay: &'h [u8], key: &Finder<'_>) -> Option<&'h str> {
    string_value(&hay[key.find(hay)? + key.needle().len()..])
}

/// The string after a colon at the start of `rest` (a model name or a finish reason: up to 128
/// plain characters, no escapes; anything else is not reported).
fn string_value(rest: &[u8]) -> Option<&str> {
    let rest = rest.trim_ascii_start().strip_prefix(b":")?;
    let rest = rest.trim_ascii_start().strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', rest)?;
    let value = &rest[..end];
    let plain = value.len() <= 128 && value.iter().all(|b| b.is_ascii_graphic() && *b != b'\\');
    plain.then(|| std::str::from_utf8(value).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_short_plain_strings_only() {
        let chunk =
            br#"{"id":"x","model": "gpt-4o-2024-08-06","choices":[{"finish_reason":"stop"}]}"#;
        let finish = Finder::new(b"\"finish_reason\"");
        assert_eq!(string_after(chunk, &MODEL), Some("gpt-4o-2024-08-06"));
        assert_eq!(string_after(chunk, &finish), Some("stop"));
        assert_eq!(string_after(br#"{"finish_reason":null}"#, &finish), None);
        assert_eq!(string_after(br#"{"model":"a\"b"}"#, &MODEL), None);
    }

    #[test]
    fn a_whole_answers_model_and_last_finish_reason_are_found() {
        let body = format!(
            r#"{{"id":"c","model":"gpt-4o-2024-08-06","choices":[{{"message":{{"content":"{}"}},"finish_reason":"length"}},{{"finish_reason":"stop"}}],"usage":{{}}}}"#,
            "x".repeat(5000)
        );
        let body = body.as_bytes();
        // As `note_answer` cuts them: the model is only in the head, the reasons in the tail.
        let (head, tail) = (&body[..HEAD_BYTES], &body[body.len() - TAIL_BYTES..]);
        assert_eq!(
            answer_facts(head, tail, false),
            (Some("gpt-4o-2024-08-06"), Some("stop"))
        );
        assert_eq!(answer_facts(b"", tail, false), (None, Some("stop")));
    }

    #[test]
    fn a_chat_answers_last_finish_reason_is_found_before_its_usage() {
        let choice = |reason: &str| {
            format!(
                r#"{{"message":{{"content":"{}"}},"finish_reason":{reason}}}"#,
                "x".repeat(300)
            )
        };
        let usage = r#""usage":{"prompt_tokens":1}"#;
        for (choices, want) in [
            (
                choice(r#""length""#) + "," + &choice(r#""stop""#),
                Some("stop"),
            ),
            (choice("null"), None),
            (choice(r#""a b""#), None),
        ] {
            let body = format!(r#"{{"model":"m-1","choices":[{choices}],{usage}}}"#);
            let at = body.find(usage).expect("usage") + 8;
            let body = body.as_bytes();
            assert_eq!(
                whole_answer_facts(body, Some(at)),
                (Some("m-1"), want),
                "{choices}"
            );
            // As the tail's search finds them.
            assert_eq!(
                whole_answer_facts(body, None),
                (Some("m-1"), want),
                "{choices}"
            );
        }
        // Azure's choice ends with its message: its finish reason is further back than the
        // short search looks, and is found in the tail.
        let body = format!(
            r#"{{"model":"m-1","choices":[{{"finish_reason":"stop","message":{{"content":"{}"}}}}],{usage}}}"#,
            "x".repeat(300)
        );
        let at = body.find(usage).expect("usage") + 8;
        assert_eq!(
            whole_answer_facts(body.as_bytes(), Some(at)),
            (Some("m-1"), Some("stop"))
        );
        // `content_filter` has an `f` after the key: the search goes on past it.
        let body = format!(
            r#"{{"model":"m-1","choices":[{}],{usage}}}"#,
            choice(r#""content_filter""#)
        );
        let at = body.find(usage).expect("usage") + 8;
        assert_eq!(
            whole_answer_facts(body.as_bytes(), Some(at)),
            (Some("m-1"), Some("content_filter"))
        );
        assert_eq!(rfind_finish_reason(br#"f"finish_reason"ff"#), Some(1));
        assert_eq!(rfind_finish_reason(br#"finish_reason""#), None);
        // A value of more than 128 characters, or without its closing quote, is not reported.
        let long = format!(r#""finish_reason":"{}""#, "y".repeat(129));
        assert_eq!(string_value(&long.as_bytes()[15..]), None);
        assert_eq!(string_value(&long.as_bytes()[15..long.len() - 2]), None);
        let longest = format!(r#""finish_reason":"{}""#, "y".repeat(128));
        assert_eq!(
            string_value(&longest.as_bytes()[15..]).map(str::len),
            Some(128)
        );
    }

    #[test]
    fn the_tail_keeps_the_last_bytes_across_chunks() {
        let mut f = Finish {
            started: Instant::now(),
            request_id: String::new(),
            trace_id: String::new(),
            endpoint: EndpointLabel::ChatCompletions,
            status: 200,
            error: ErrorLabel::None,
            overhead: None,
            upstream: None,
            route: RouteLabels::default(),
            streaming: true,
            first_byte: None,
            bytes: 0,
            tokens: None,
            token_slot: None,
            tail: Some(BytesMut::new()),
            head: None,
            answer_traced: false,
            trace: Trace::default(),
        };
        f.chunk(&Bytes::from(vec![b'a'; 3000]));
        f.chunk(&Bytes::from(vec![b'b'; 3000]));
        f.chunk(&Bytes::from_static(b"end"));
        let tail = f.tail.take().unwrap_or_default();
        assert_eq!(tail.len(), TAIL_BYTES);
        assert!(tail.ends_with(b"bend"));
        assert_eq!(
            tail.iter().filter(|b| **b == b'a').count(),
            TAIL_BYTES - 3003
        );
        assert_eq!(f.bytes, 6003);
        assert!(f.first_byte.is_some());
    }
}
