//! Relaying an upstream Server-Sent-Events stream to the client, event by event.
//!
//! [`RelayStream`] forwards whole SSE events as soon as they arrive (never the whole stream,
//! never half an event), watches for the stream's proper end (`data: [DONE]` for chat, a
//! terminal `response.*` event for Responses) and, when the upstream breaks off or ends early,
//! closes the client's stream with an OpenAI-shaped error event instead of a silent cut.
//! Holding back a torn trailing event is what lets that error event parse on the client.
//!
//! [`TranslatedStream`] is the same relay for providers whose wire is not the front API:
//! framing decoder and translator (the provider's) → canonical events → the answer so far
//! (what the usage tap and the response store read when it ends) → the front encoder.
//!
//! Both hold a complete answer's last events until the writes they must follow are in, at
//! most `governance::ACK_WAIT` ([`Held`]): the relay, the events that carry the usage, until
//! the ledger commits it; the translated relay, the encoder's closing output (`[DONE]`,
//! `response.completed`), until the ledger's commit and the stored response its end hook
//! returned. So a client that received an answer in full finds it billed and, on any replica,
//! stored. [`settled`] is the same wait for a whole answer.

use super::Endpoint;
use super::canonical::{Reply, ReplyBuilder, StreamDecoder, StreamEvent};
use super::codec::FrontEncoder;
use super::response_ids::IdRewriter;
use super::usage::Ack;
use crate::telemetry::scope::Scope;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// One item from the upstream pump: bytes, or why the upstream stream failed.
pub type UpstreamChunk = Result<Bytes, String>;

/// A streamed upstream body as the relays read it: what was read before the answer started
/// (the first event, at least), then the rest from the provider actor's pump as it arrives.
///
/// The first chunk travels with the answer rather than through the channel: it is ready when
/// the answer is, and the relay's first poll, which writes it, need not wait for the pump.
#[derive(Debug)]
pub struct UpstreamStream {
    pub first: Option<Bytes>,
    pub rest: mpsc::Receiver<UpstreamChunk>,
}

impl UpstreamStream {
    /// The next chunk: the first, then the pump's.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<UpstreamChunk>> {
        match self.first.take() {
            Some(first) => Poll::Ready(Some(Ok(first))),
            None => self.rest.poll_recv(cx),
        }
    }
}

/// Streams SSE events from an upstream channel to the client.
pub struct RelayStream {
    upstream: UpstreamStream,
    endpoint: Endpoint,
    provider: String,
    /// Bytes of an event whose end has not arrived yet.
    pending: BytesMut,
    /// Complete events relayed so far (the next Responses `sequence_number`).
    events: u64,
    /// The upstream sent its terminal event (or its own error event).
    finished: bool,
    closed: bool,
    /// Scopes Responses ids to the tenant (see `response_ids`).
    ids: Option<IdRewriter>,
    /// The request's scope: the relay runs after the handler returned, outside it.
    scope: Scope,
    /// Reads the stream's usage (and hides what the client did not ask for); reports it when
    /// the relay is dropped.
    usage: Option<super::usage::UsageTap>,
    /// Events held until the ledger commits the usage they carry (`api::usage`).
    held: Option<Held>,
}

/// Events waiting for the writes they must follow (the ledger's commit of their usage, a
/// stored response), at most until `deadline`.
struct Held {
    events: Bytes,
    acks: Vec<Ack>,
    /// One of the writes failed.
    failed: bool,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Held {
    /// Holds `events` until every ack is in (at most `governance::ACK_WAIT`).
    fn new(events: Bytes, acks: Vec<Ack>) -> Self {
        Self {
            events,
            acks,
            failed: false,
            deadline: Box::pin(tokio::time::sleep(crate::governance::ACK_WAIT)),
        }
    }

    /// The events, once every write committed, failed or is late; logs the last two.
    fn poll_release(&mut self, cx: &mut Context<'_>, scope: &Scope) -> Poll<Bytes> {
        use std::future::Future;
        let mut failed = false;
        self.acks.retain_mut(|ack| match Pin::new(ack).poll(cx) {
            Poll::Ready(Ok(true)) => false,
            Poll::Ready(_) => {
                failed = true;
                false
            }
            Poll::Pending => true,
        });
        self.failed |= failed;
        let outcome = if !self.acks.is_empty() {
            match self.deadline.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => Some("a write is late: the answer ends before it"),
            }
        } else if self.failed {
            Some("a write failed: the answer ends without it")
        } else {
            None
        };
        if let Some(why) = outcome {
            let _entered = scope.enter();
            tracing::warn!("{why}");
        }
        Poll::Ready(std::mem::take(&mut self.events))
    }
}

/// Waits until every ack is in (at most `governance::ACK_WAIT`), as a held stream end does:
/// for a whole answer that must not go out before its writes.
pub async fn settled(acks: Vec<Ack>) {
    if acks.is_empty() {
        return;
    }
    let scope = Scope::current();
    let mut held = Held::new(Bytes::new(), acks);
    std::future::poll_fn(|cx| held.poll_release(cx, &scope)).await;
}

impl RelayStream {
    /// Relays through `tap` (`api::usage`).
    pub fn with_usage_tap(mut self, tap: super::usage::UsageTap) -> Self {
        self.usage = Some(tap);
        self
    }

    pub fn new(
        upstream: UpstreamStream,
        endpoint: Endpoint,
        provider: String,
        ids: Option<IdRewriter>,
        scope: Scope,
    ) -> Self {
        Self {
            scope,
            upstream,
            endpoint,
            provider,
            pending: BytesMut::new(),
            events: 0,
            finished: false,
            closed: false,
            ids,
            usage: None,
            held: None,
        }
    }

    /// Holds `events` until `ack` says their usage is committed (at most `governance::ACK_WAIT`).
    fn hold(&mut self, events: Bytes, ack: Ack) {
        self.held = Some(Held::new(events, vec![ack]));
    }

    /// Notes what a run of complete events says: how many, and whether one was terminal. One
    /// pass over its newlines: a blank line ends an event, and a terminal marker counts at the
    /// start of a line.
    fn scan(&mut self, events: &[u8]) {
        let markers = terminal_markers(self.endpoint);
        let at_marker = |line: usize| markers.iter().any(|m| events[line..].starts_with(m));
        let mut finished = self.finished || at_marker(0);
        // Where the next "\n\n" and the next "\r\n\r\n" may start (matches do not overlap).
        let (mut lf_from, mut crlf_from) = (0, 0);
        for nl in memchr::memchr_iter(b'\n', events) {
            if let Some(start) = blank_line_at(events, nl) {
                let from = if nl - start == 1 {
                    &mut lf_from
                } else {
                    &mut crlf_from
                };
                if start >= *from {
                    self.events += 1;
                    *from = nl + 1;
                }
            }
            if !finished {
                finished = at_marker(nl + 1);
            }
        }
        self.finished = finished;
    }

    /// The event that ends a broken stream.
    fn error_event(&self, why: &str) -> Bytes {
        let message = format!(
            "The upstream provider {} ended the stream early: {why}",
            self.provider
        );
        let body = match self.endpoint {
            Endpoint::ChatCompletions => format!(
                "data: {}\n\n",
                serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": "upstream_stream_interrupted"}})
            ),
            Endpoint::Responses => format!(
                "event: error\ndata: {}\n\n",
                serde_json::json!({"type": "error", "code": "upstream_stream_interrupted", "message": message, "param": null, "sequence_number": self.events})
            ),
        };
        Bytes::from(body)
    }

    /// Ends the relay: flushes a terminated tail, or replaces a torn one with an error event.
    fn finish(&mut self, failure: Option<String>) -> Option<Bytes> {
        self.closed = true;
        let tail = std::mem::take(&mut self.pending);
        if !tail.is_empty() {
            self.scan(&tail);
        }
        if self.finished {
            if tail.iter().all(u8::is_ascii_whitespace) {
                return None;
            }
            let mut out = tail;
            out.extend_from_slice(b"\n\n");
            let out = out.freeze();
            let mut out = match &mut self.ids {
                Some(ids) => ids.events(out),
                None => out,
            };
            if let Some(tap) = &mut self.usage {
                out = tap.events(out);
                if let Some(ack) = tap.take_ack() {
                    // Released by `poll_next` once committed.
                    self.hold(out, ack);
                    return None;
                }
            }
            return Some(out);
        }
        let why = failure.unwrap_or_else(|| "the connection closed before the final event".into());
        let _entered = self.scope.enter();
        tracing::warn!(provider = %self.provider, reason = %why, "upstream stream interrupted");
        Some(self.error_event(&why))
    }
}

/// True once `buf` holds at least one whole SSE event.
pub fn has_whole_event(buf: &[u8]) -> bool {
    last_boundary(buf).is_some()
}

/// The first whole SSE event in `buf`: its length (blank line included), its `event:` name,
/// if any, and its `data:` lines joined. `None` until a whole event has arrived (or when it
/// is not UTF-8). What the event means is the provider's business (`providers::Adapter`).
pub fn first_sse_event(buf: &[u8]) -> Option<(usize, Option<&str>, String)> {
    let end = first_boundary(buf)?;
    let event = std::str::from_utf8(&buf[..end]).ok()?;
    let mut name = None;
    let mut data = String::new();
    for line in event.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    Some((end, name, data))
}

/// Lines that end a stream properly.
fn terminal_markers(endpoint: Endpoint) -> &'static [&'static [u8]] {
    match endpoint {
        Endpoint::ChatCompletions => &[
            b"data: [DONE]",
            b"data:[DONE]",
            b"data: {\"error\"",
            b"data:{\"error\"",
        ],
        Endpoint::Responses => &[
            b"event: response.completed",
            b"event: response.failed",
            b"event: response.incomplete",
            b"event: error",
        ],
    }
}

/// Where the blank line ending at the newline `nl` starts, if one does: `"\n\n"` or
/// `"\r\n\r\n"`, the two ways an SSE event ends. The event boundaries are found by walking
/// the newlines (`memchr`): a `memmem` search per pattern, with a searcher built for each, was a
/// fifth of a relayed stream's instructions.
fn blank_line_at(buf: &[u8], nl: usize) -> Option<usize> {
    if nl >= 1 && buf[nl - 1] == b'\n' {
        Some(nl - 1)
    } else if nl >= 3 && &buf[nl - 3..nl] == b"\r\n\r" {
        Some(nl - 3)
    } else {
        None
    }
}

/// End offset (blank line included) of the first complete event in `buf`.
pub fn first_boundary(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf)
        .find(|&nl| blank_line_at(buf, nl).is_some())
        .map(|nl| nl + 1)
}

/// End offset of the last complete event in `buf`.
fn last_boundary(buf: &[u8]) -> Option<usize> {
    memchr::memrchr_iter(b'\n', buf)
        .find(|&nl| blank_line_at(buf, nl).is_some())
        .map(|nl| nl + 1)
}

impl Stream for RelayStream {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(held) = &mut this.held {
                let Poll::Ready(events) = held.poll_release(cx, &this.scope) else {
                    return Poll::Pending;
                };
                this.held = None;
                if !events.is_empty() {
                    return Poll::Ready(Some(Ok(events)));
                }
            }
            if this.closed {
                return Poll::Ready(None);
            }
            match this.upstream.poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    // Fast path: nothing held back and the chunk ends on an event boundary.
                    let ready = if this.pending.is_empty() {
                        match last_boundary(&chunk) {
                            Some(end) if end == chunk.len() => Some(chunk),
                            Some(end) => {
                                this.pending.extend_from_slice(&chunk[end..]);
                                Some(chunk.slice(..end))
                            }
                            None => {
                                this.pending.extend_from_slice(&chunk);
                                None
                            }
                        }
                    } else {
                        this.pending.extend_from_slice(&chunk);
                        last_boundary(&this.pending).map(|end| this.pending.split_to(end).freeze())
                    };
                    if let Some(mut events) = ready {
                        this.scan(&events);
                        if let Some(ids) = &mut this.ids {
                            events = ids.events(events);
                        }
                        if let Some(tap) = &mut this.usage {
                            events = tap.events(events);
                            if let Some(ack) = tap.take_ack() {
                                this.hold(events, ack);
                                continue;
                            }
                            if events.is_empty() {
                                continue;
                            }
                        }
                        return Poll::Ready(Some(Ok(events)));
                    }
                }
                Poll::Ready(Some(Err(why))) => {
                    let tail = this.finish(Some(why));
                    if this.held.is_none() {
                        return Poll::Ready(tail.map(Ok));
                    }
                }
                Poll::Ready(None) => {
                    let tail = this.finish(None);
                    if this.held.is_none() {
                        return Poll::Ready(tail.map(Ok));
                    }
                }
            }
        }
    }
}

/// How a translated answer ended, for the hook that stores it and reads its usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The provider finished the answer and the client has all of it.
    Complete,
    /// The upstream broke off or sent an error; the client got an error event.
    Failed,
    /// The client went away before the end.
    Abandoned,
}

/// Called once when a translated answer ends, with what it amounted to so far (the usage
/// tap and the response store hang here). Returns the writes the stream's closing events
/// wait for (the ledger's commit, the stored response), each an [`Ack`].
pub type OnEnd = Box<dyn FnOnce(&Reply, Ending) -> Vec<Ack> + Send>;

/// The relay for a provider whose wire is not the front API: upstream bytes → the provider's
/// [`StreamDecoder`] (framing and translation) → canonical events, folded into the answer
/// so far → the front endpoint's [`FrontEncoder`]. A failure after the headers (a broken
/// connection, an error the provider streams, a frame that does not decode) ends the
/// client's stream with the endpoint's own error event.
pub struct TranslatedStream {
    upstream: UpstreamStream,
    decoder: Box<dyn StreamDecoder>,
    encoder: Box<dyn FrontEncoder>,
    answer: ReplyBuilder,
    events: Vec<StreamEvent>,
    provider: String,
    on_end: Option<OnEnd>,
    closed: bool,
    /// The closing events, held until the writes the end hook returned are in.
    held: Option<Held>,
    scope: Scope,
}

impl TranslatedStream {
    pub fn new(
        upstream: UpstreamStream,
        decoder: Box<dyn StreamDecoder>,
        encoder: Box<dyn FrontEncoder>,
        provider: String,
        on_end: OnEnd,
        scope: Scope,
    ) -> Self {
        Self {
            upstream,
            decoder,
            encoder,
            answer: ReplyBuilder::default(),
            events: Vec::new(),
            provider,
            on_end: Some(on_end),
            closed: false,
            held: None,
            scope,
        }
    }

    /// Encodes the decoded events, folding them into the answer.
    fn encode(&mut self, out: &mut BytesMut) {
        for event in self.events.drain(..) {
            self.answer.push(&event);
            self.encoder.push(&event, out);
        }
    }

    /// Ends the stream: the closing events, or the error event when `failure` says why not.
    /// They go into `out`, or are held when the end hook returned writes to wait for.
    fn close(&mut self, failure: Option<String>, out: &mut BytesMut) {
        self.closed = true;
        let mut closing = BytesMut::new();
        let ending = match failure {
            None => {
                self.encoder.finish(&mut closing);
                Ending::Complete
            }
            Some(why) => {
                let _entered = self.scope.enter();
                tracing::warn!(provider = %self.provider, reason = %why, "upstream stream interrupted");
                let message = format!(
                    "The upstream provider {} ended the stream early: {why}",
                    self.provider
                );
                self.encoder
                    .fail("upstream_stream_interrupted", &message, &mut closing);
                Ending::Failed
            }
        };
        let acks = match self.on_end.take() {
            Some(on_end) => on_end(self.answer.reply(), ending),
            None => Vec::new(),
        };
        if acks.is_empty() {
            out.extend_from_slice(&closing);
        } else {
            // Released by `poll_next` once the writes are in.
            self.held = Some(Held::new(closing.freeze(), acks));
        }
    }
}

impl Drop for TranslatedStream {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.answer.reply(), Ending::Abandoned);
        }
    }
}

impl Stream for TranslatedStream {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(held) = &mut this.held {
                let Poll::Ready(events) = held.poll_release(cx, &this.scope) else {
                    return Poll::Pending;
                };
                this.held = None;
                if !events.is_empty() {
                    return Poll::Ready(Some(Ok(events)));
                }
            }
            if this.closed {
                return Poll::Ready(None);
            }
            let mut out = BytesMut::new();
            match this.upstream.poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let fed = this.decoder.feed(&chunk, &mut this.events);
                    this.encode(&mut out);
                    if let Err(why) = fed {
                        this.close(Some(why), &mut out);
                    }
                }
                Poll::Ready(Some(Err(why))) => this.close(Some(why), &mut out),
                Poll::Ready(None) => {
                    let ended = this.decoder.end(&mut this.events);
                    this.encode(&mut out);
                    this.close(ended.err(), &mut out);
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(out.freeze())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{FutureExt, StreamExt};

    /// Every string of up to 8 bytes over `\r`, `\n`, `d` and `x`: the newline walk finds the
    /// same boundaries, counts the same events and sees the same terminal line as a search for
    /// each pattern does.
    #[test]
    fn the_newline_walk_agrees_with_a_search_for_each_pattern() {
        use memchr::memmem;
        let count = |b: &[u8], p: &[u8]| memmem::find_iter(b, p).count() as u64;
        let alphabet = [b'\r', b'\n', b'd', b'x'];
        let mut checked = 0;
        for len in 0..=8u32 {
            for mut n in 0..4usize.pow(len) {
                let mut buf = Vec::new();
                for _ in 0..len {
                    buf.push(alphabet[n % 4]);
                    n /= 4;
                }
                let lf = memmem::find(&buf, b"\n\n").map(|i| i + 2);
                let crlf = memmem::find(&buf, b"\r\n\r\n").map(|i| i + 4);
                let first = match (lf, crlf) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                assert_eq!(first_boundary(&buf), first, "{buf:?}");
                let lf = memmem::rfind(&buf, b"\n\n").map(|i| i + 2);
                let crlf = memmem::rfind(&buf, b"\r\n\r\n").map(|i| i + 4);
                assert_eq!(last_boundary(&buf), lf.max(crlf), "{buf:?}");
                // `d` stands for a terminal line (`data: [DONE]`).
                let text: Vec<u8> = buf
                    .iter()
                    .flat_map(|&b| match b {
                        b'd' => &b"data: [DONE]"[..],
                        b'\r' => b"\r",
                        b'\n' => b"\n",
                        _ => b"x",
                    })
                    .copied()
                    .collect();
                let (tx, rx) = mpsc::channel(1);
                drop(tx);
                let mut relay = RelayStream::new(
                    UpstreamStream {
                        first: None,
                        rest: rx,
                    },
                    Endpoint::ChatCompletions,
                    "p".into(),
                    None,
                    Scope::default(),
                );
                RelayStream::scan(&mut relay, &text);
                assert_eq!(
                    relay.events,
                    count(&text, b"\n\n") + count(&text, b"\r\n\r\n")
                );
                let terminal = memmem::find_iter(&text, b"data: [DONE]")
                    .any(|at| at == 0 || text[at - 1] == b'\n');
                assert_eq!(relay.finished, terminal, "{text:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, (0..=8).map(|l| 4usize.pow(l)).sum::<usize>());
    }

    async fn relay(endpoint: Endpoint, chunks: Vec<UpstreamChunk>) -> Vec<Bytes> {
        let (tx, rx) = mpsc::channel(chunks.len() + 1);
        let mut chunks = chunks.into_iter();
        // The first chunk comes with the answer, as the provider actor hands it over.
        let first = match chunks.next() {
            Some(Ok(first)) => Some(first),
            Some(failed) => {
                tx.send(failed).await.expect("send");
                None
            }
            None => None,
        };
        for c in chunks {
            tx.send(c).await.expect("send");
        }
        drop(tx);
        let upstream = UpstreamStream { first, rest: rx };
        RelayStream::new(upstream, endpoint, "openai".into(), None, Scope::default())
            .map(|r| r.expect("relay never fails"))
            .collect()
            .await
    }

    fn ok(s: &str) -> UpstreamChunk {
        Ok(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[actix_web::test]
    async fn whole_events_pass_and_split_events_are_joined() {
        let out = relay(
            Endpoint::ChatCompletions,
            vec![
                ok("data: {\"a\":1}\n\ndata: {\"b\""),
                ok(":2}\n"),
                ok("\ndata: [DONE]\n\n"),
            ],
        )
        .await;
        // The held-back half joins its end; complete events in one chunk go out together.
        assert_eq!(
            out,
            vec![
                Bytes::from("data: {\"a\":1}\n\n"),
                Bytes::from("data: {\"b\":2}\n\ndata: [DONE]\n\n")
            ]
        );
    }

    #[actix_web::test]
    async fn a_cut_stream_ends_with_an_error_event_not_half_an_event() {
        let out = relay(
            Endpoint::ChatCompletions,
            vec![
                ok("data: {\"a\":1}\n\ndata: {\"b\""),
                Err("connection reset".into()),
            ],
        )
        .await;
        assert_eq!(out.len(), 2);
        let last = std::str::from_utf8(&out[1]).expect("utf8");
        let json: serde_json::Value =
            serde_json::from_str(last.trim().trim_start_matches("data: "))
                .expect("error event is JSON");
        assert_eq!(json["error"]["code"], "upstream_stream_interrupted");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("connection reset")
        );
    }

    #[actix_web::test]
    async fn a_clean_close_without_done_is_an_error_too() {
        let out = relay(Endpoint::ChatCompletions, vec![ok("data: {\"a\":1}\n\n")]).await;
        assert!(
            std::str::from_utf8(&out[1])
                .unwrap_or("")
                .contains("upstream_stream_interrupted")
        );
    }

    #[actix_web::test]
    async fn upstream_error_events_are_not_doubled() {
        let out = relay(
            Endpoint::ChatCompletions,
            vec![ok("data: {\"error\":{\"message\":\"x\"}}\n\n")],
        )
        .await;
        assert_eq!(out.len(), 1);
    }

    #[actix_web::test]
    async fn responses_error_event_carries_the_next_sequence_number() {
        let out = relay(
            Endpoint::Responses,
            vec![ok("event: response.created\ndata: {\"sequence_number\":0}\n\nevent: response.in_progress\ndata: {\"sequence_number\":1}\n\n"), Err("reset".into())],
        )
        .await;
        let last = std::str::from_utf8(&out[1]).expect("utf8");
        assert!(last.starts_with("event: error\ndata: "), "{last}");
        assert!(last.contains("\"sequence_number\":2"), "{last}");
    }

    #[actix_web::test]
    async fn responses_terminal_event_ends_cleanly_even_without_a_blank_line() {
        let out = relay(
            Endpoint::Responses,
            vec![ok("event: response.completed\ndata: {}")],
        )
        .await;
        assert_eq!(
            out,
            vec![Bytes::from("event: response.completed\ndata: {}\n\n")]
        );
    }

    /// Any split of a valid stream into chunks relays the same bytes, whole events only, and
    /// ends cleanly; random garbage never panics and always ends with exactly one error event.
    #[actix_web::test]
    async fn any_split_relays_the_same_events_and_garbage_never_panics() {
        let events = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"héllo 你好\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"wo\\nrld\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        ];
        let whole: Vec<u8> = events.concat().into_bytes();
        let mut fuzz = crate::fuzz::Budget::new("SSE relay", 300);
        while fuzz.more() {
            let rng = &mut fuzz.rng;
            let mut chunks = Vec::new();
            let mut at = 0;
            while at < whole.len() {
                let n = rng.usize(1..=whole.len() - at);
                chunks.push(Ok(Bytes::copy_from_slice(&whole[at..at + n])));
                at += n;
            }
            let out = relay(Endpoint::ChatCompletions, chunks).await;
            assert_eq!(out.concat(), whole);
            assert!(
                out.iter().all(|c| c.ends_with(b"\n\n")),
                "only whole events: {out:?}"
            );
        }
        let mut fuzz = crate::fuzz::Budget::new("SSE relay garbage", 300);
        while fuzz.more() {
            let rng = &mut fuzz.rng;
            let garbage: Vec<u8> = (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect();
            let cut = rng.usize(0..=garbage.len());
            let chunks = vec![
                Ok(Bytes::copy_from_slice(&garbage[..cut])),
                Ok(Bytes::copy_from_slice(&garbage[cut..])),
            ];
            let out = relay(Endpoint::Responses, chunks).await;
            let errors = out
                .iter()
                .filter(|c| c.starts_with(b"event: error\n"))
                .count();
            let terminal = garbage
                .windows(14)
                .any(|w| w == b"event: respons" || w == b"event: error\nd");
            assert!(errors == 1 || terminal, "{garbage:?} -> {out:?}");
        }
    }

    #[test]
    fn the_first_event_is_read_whole_across_line_endings() {
        assert_eq!(
            first_sse_event(b"event: error\ndata: {\"a\":\r\ndata: 1}\r\n\r\nrest\n\n"),
            Some((38, Some("error"), "{\"a\":1}".to_owned()))
        );
        assert_eq!(
            first_sse_event(b"data: {\"error\""),
            None,
            "not a whole event yet"
        );
    }

    /// A toy provider stream: one line per event (`T:text`, `F` to finish, `E:why` for an
    /// error the provider streams), so the relay can be tested without a provider.
    struct Lines(Vec<u8>, bool);

    impl StreamDecoder for Lines {
        fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), String> {
            self.0.extend_from_slice(bytes);
            while let Some(n) = self.0.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.0.drain(..=n).collect();
                let line = String::from_utf8_lossy(&line[..n]).into_owned();
                match line.split_once(':') {
                    Some(("T", t)) => out.push(StreamEvent::Text(t.into())),
                    Some(("E", why)) => return Err(why.into()),
                    _ if line == "F" => {
                        self.1 = true;
                        out.push(StreamEvent::Finish(
                            crate::api::canonical::FinishReason::Stop,
                        ));
                    }
                    _ => return Err(format!("bad line {line}")),
                }
            }
            Ok(())
        }
        fn end(&mut self, _out: &mut Vec<StreamEvent>) -> Result<(), String> {
            if self.1 {
                Ok(())
            } else {
                Err("no finish".into())
            }
        }
    }

    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Ending)>>>;

    /// The relay over `chunks`, and the upstream's sender (dropping it ends the upstream).
    fn translated(
        chunks: Vec<UpstreamChunk>,
        seen: &Seen,
    ) -> (TranslatedStream, mpsc::Sender<UpstreamChunk>) {
        translated_waiting(chunks, seen, None)
    }

    /// As [`translated`], the end hook returning `ack` for the stream's end to wait on.
    fn translated_waiting(
        chunks: Vec<UpstreamChunk>,
        seen: &Seen,
        ack: Option<Ack>,
    ) -> (TranslatedStream, mpsc::Sender<UpstreamChunk>) {
        let (tx, rx) = mpsc::channel(chunks.len() + 1);
        for c in chunks {
            tx.try_send(c).expect("room");
        }
        let encoder = crate::api::chat::ChatStream::new(
            crate::api::chat::Stamp {
                id: "c".into(),
                created: 1,
                model: "m".into(),
            },
            crate::api::chat::ChatOptions::default(),
        );
        let seen = seen.clone();
        let stream = TranslatedStream::new(
            UpstreamStream {
                first: None,
                rest: rx,
            },
            Box::new(Lines(Vec::new(), false)),
            Box::new(encoder),
            "toy".into(),
            Box::new(move |reply, ending| {
                seen.lock().expect("lock").push((reply.text(), ending));
                ack.into_iter().collect()
            }),
            Scope::default(),
        );
        (stream, tx)
    }

    async fn body((stream, tx): (TranslatedStream, mpsc::Sender<UpstreamChunk>)) -> String {
        drop(tx);
        let parts: Vec<Bytes> = stream.map(|r| r.expect("never fails")).collect().await;
        parts
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    fn data_lines(body: &str) -> Vec<String> {
        body.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[actix_web::test]
    async fn a_translated_stream_is_encoded_event_by_event_and_ends_once() {
        let seen = Seen::default();
        // Lines split across chunks, inside a line too.
        let out = body(translated(
            vec![ok("T:Hel"), ok("lo\nT: world\n"), ok("F\n")],
            &seen,
        ))
        .await;
        let events = data_lines(&out);
        assert_eq!(events.len(), 5, "{out}");
        assert!(events[1].contains("\"content\":\"Hello\""), "{}", events[1]);
        assert!(events[3].contains("\"finish_reason\":\"stop\""));
        assert_eq!(events[4], "data: [DONE]");
        assert_eq!(
            *seen.lock().expect("lock"),
            [("Hello world".to_owned(), Ending::Complete)]
        );
    }

    #[actix_web::test]
    async fn a_translated_stream_that_breaks_ends_in_an_error_event() {
        for (chunks, why) in [
            (
                vec![ok("T:a\n"), Err("the upstream connection broke".to_owned())],
                "the upstream connection broke",
            ),
            (vec![ok("T:a\nE:overloaded\nT:never\n")], "overloaded"),
            (vec![ok("T:a\n")], "no finish"),
        ] {
            let seen = Seen::default();
            let out = body(translated(chunks, &seen)).await;
            let events = data_lines(&out);
            assert_eq!(events.len(), 3, "{out}");
            let last: serde_json::Value =
                serde_json::from_str(events[2].strip_prefix("data: ").expect("data"))
                    .expect("json");
            assert_eq!(last["error"]["code"], "upstream_stream_interrupted");
            assert_eq!(
                last["error"]["message"],
                format!("The upstream provider toy ended the stream early: {why}")
            );
            assert!(!out.contains("never") && !out.contains("[DONE]"));
            assert_eq!(
                *seen.lock().expect("lock"),
                [("a".to_owned(), Ending::Failed)]
            );
        }
    }

    #[actix_web::test]
    async fn an_abandoned_translated_stream_still_reports_what_it_got() {
        let seen = Seen::default();
        let (mut stream, _upstream_still_open) = translated(vec![ok("T:partial\n")], &seen);
        let first = stream.next().await.expect("a chunk").expect("ok");
        assert!(String::from_utf8_lossy(&first).contains("partial"));
        drop(stream);
        assert_eq!(
            *seen.lock().expect("lock"),
            [("partial".to_owned(), Ending::Abandoned)]
        );
    }

    /// The closing events (the encoder's `finish`) wait for the end hook's writes: nothing
    /// of them is yielded before the ack, and they come once it is in.
    #[actix_web::test]
    async fn a_translated_streams_closing_events_wait_for_the_end_hooks_writes() {
        let seen = Seen::default();
        let (ack_tx, ack) = tokio::sync::oneshot::channel();
        let (mut stream, tx) =
            translated_waiting(vec![ok("T:Hello\n"), ok("F\n")], &seen, Some(ack));
        drop(tx);
        let mut got = String::new();
        // Everything before the end, then the stream waits.
        loop {
            match stream.next().now_or_never() {
                Some(Some(chunk)) => got.push_str(&String::from_utf8_lossy(&chunk.expect("ok"))),
                Some(None) => panic!("ended before the ack: {got}"),
                None => break,
            }
        }
        assert!(got.contains("\"content\":\"Hello\""), "{got}");
        assert!(got.contains("\"finish_reason\":\"stop\""), "{got}");
        assert!(!got.contains("[DONE]"), "{got}");
        assert_eq!(
            *seen.lock().expect("lock"),
            [("Hello".to_owned(), Ending::Complete)],
            "the hook ran at the end"
        );
        // Still waiting a while later: only the ack releases it, not the passing of time.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(stream.next().now_or_never().is_none());
        ack_tx.send(true).expect("the stream waits on it");
        let rest: Vec<Bytes> = stream.map(|r| r.expect("ok")).collect().await;
        let rest: String = rest.iter().map(|b| String::from_utf8_lossy(b)).collect();
        // The encoder's closing output (`finish`): for chat without usage, `[DONE]`.
        assert_eq!(rest, "data: [DONE]\n\n");
    }

    /// A write that never answers holds the end only until the deadline.
    #[actix_web::test]
    async fn a_late_write_holds_the_end_only_until_the_deadline() {
        let seen = Seen::default();
        let (_never_sent, ack) = tokio::sync::oneshot::channel();
        let started = std::time::Instant::now();
        let out = body(translated_waiting(vec![ok("T:a\nF\n")], &seen, Some(ack))).await;
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
        let waited = started.elapsed();
        let wait = crate::governance::ACK_WAIT;
        assert!(
            wait <= waited && waited < wait + std::time::Duration::from_millis(500),
            "{waited:?}"
        );
    }
}
