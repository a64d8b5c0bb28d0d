//! `streamGenerateContent?alt=sse` decoded into canonical stream events.
//!
//! Framing: Server-Sent Events over raw bytes. Lines end in LF or CRLF (Google's own streams
//! use `\r\n\r\n` between events), `data:` may or may not be followed by a space, and an event
//! ends at a blank line. Bytes are kept until a whole event is there, so input may be split
//! anywhere, inside a line or a UTF-8 character; the event's JSON is decoded from its bytes
//! once whole (never `from_utf8_lossy` on a piece). Each event is a full
//! `GenerateContentResponse` holding only the new parts (`reply.rs` reads it): `Start` once,
//! text and reasoning deltas, each function call whole (`ToolCall` then its arguments),
//! `Finish` when a `finishReason` arrives (STOP with any call earlier in the stream is
//! `tool_calls`), and the last `usageMetadata` (running totals) once, at the end. An error
//! event ends the stream with its message; so does the body ending before any finish reason.

use super::reply::{self, Response};
use crate::api::canonical::{FinishReason, Part, StreamEvent};
use crate::providers::StreamDecoder;
use std::borrow::Cow;

/// The largest event the decoder holds before calling the stream broken (a full answer is
/// never one event; this only bounds a stream that never sends a blank line).
const MAX_EVENT: usize = 16 * 1024 * 1024;

/// Decodes one Gemini SSE stream.
#[derive(Default)]
pub(super) struct Decoder {
    /// Bytes after the last whole line.
    line: Vec<u8>,
    /// The `data:` lines of the event being read, joined by `\n`.
    data: Vec<u8>,
    /// Whether the event being read has a `data:` line (an empty one counts).
    has_data: bool,
    started: bool,
    /// A function call appeared somewhere in the stream.
    called: bool,
    finished: bool,
    usage: Option<reply::UsageMetadata>,
    /// The stream failed; nothing more is decoded.
    failed: bool,
}

impl Decoder {
    /// Reads complete lines out of `self.line` + `bytes`, dispatching events at blank lines.
    fn lines(&mut self, mut bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), String> {
        while let Some(nl) = memchr::memchr(b'\n', bytes) {
            let (head, rest) = bytes.split_at(nl);
            bytes = &rest[1..];
            if self.line.is_empty() {
                self.line_done(head, out)?;
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(head);
                let result = self.line_done(&line, out);
                line.clear();
                self.line = line;
                result?;
            }
        }
        self.line.extend_from_slice(bytes);
        if self.line.len() + self.data.len() > MAX_EVENT {
            return Err(format!("a stream event exceeded {MAX_EVENT} bytes"));
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.dispatch(out);
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        // Comments (`:`), `event:`, `id:` and `retry:` carry nothing for Gemini.
        Ok(())
    }

    /// One whole event.
    fn dispatch(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        if !std::mem::take(&mut self.has_data) {
            return Ok(());
        }
        let data = std::mem::take(&mut self.data);
        let result = self.event(&data, out);
        // Keep the allocation for the next event.
        self.data = data;
        self.data.clear();
        result
    }

    fn event(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), String> {
        let chunk: Response<'_> =
            reply::parse(data).map_err(|e| format!("an undecodable stream event ({e})"))?;
        if let Some(error) = &chunk.error {
            return Err(error.describe());
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk.response_id.as_deref().map(str::to_owned),
                model: chunk.model_version.as_deref().map(str::to_owned),
            });
        }
        if let Some(usage) = chunk.usage_metadata {
            self.usage = Some(usage);
        }
        let blocked = reply::prompt_blocked(&chunk);
        let mut finish: Option<Cow<'_, str>> = None;
        if let Some(candidate) = chunk
            .candidates
            .into_iter()
            .find(|c| c.index.unwrap_or(0) == 0)
        {
            for wire in candidate.content.into_iter().flat_map(|c| c.parts) {
                match reply::part(wire) {
                    Some(Part::Text { text }) => out.push(StreamEvent::Text(text)),
                    Some(Part::Reasoning { text, signature }) => {
                        out.push(StreamEvent::Reasoning { text, signature });
                    }
                    Some(Part::ToolCall(call)) => {
                        self.called = true;
                        out.push(StreamEvent::ToolCall {
                            id: call.id,
                            name: call.name,
                            signature: call.signature,
                        });
                        out.push(StreamEvent::ToolArguments(call.arguments));
                    }
                    Some(Part::Image(_) | Part::ToolResult(_)) | None => {}
                }
            }
            finish = candidate.finish_reason;
        }
        if self.finished {
            return Ok(());
        }
        let reason = match (blocked, finish) {
            (true, _) => FinishReason::ContentFilter,
            (false, Some(r)) => reply::finish_reason(&r, self.called),
            (false, None) => return Ok(()),
        };
        self.finished = true;
        out.push(StreamEvent::Finish(reason));
        Ok(())
    }
}

impl StreamDecoder for Decoder {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), String> {
        if self.failed {
            return Err("the stream already failed".to_owned());
        }
        let result = self.lines(bytes, out);
        self.failed = result.is_err();
        result
    }

    fn end(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        if self.failed {
            return Err("the stream already failed".to_owned());
        }
        self.failed = true;
        // A last event whose blank line never came: decoded if it is whole JSON.
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out)?;
        }
        if self.has_data {
            self.dispatch(out)?;
        }
        if !self.finished {
            return Err("the stream ended before its final chunk".to_owned());
        }
        if let Some(usage) = self.usage.take() {
            out.push(StreamEvent::Usage(usage.canonical()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::canonical::Usage;

    fn fixture() -> Vec<u8> {
        let path = format!(
            "{}/fixtures/gemini/stream_generate_content.sse",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Every event of `input` fed in the given pieces, then `end`.
    fn decode_pieces(pieces: &[&[u8]]) -> Result<Vec<StreamEvent>, String> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for piece in pieces {
            d.feed(piece, &mut out)?;
        }
        d.end(&mut out)?;
        Ok(out)
    }

    fn decode_all(input: &[u8]) -> Result<Vec<StreamEvent>, String> {
        decode_pieces(&[input])
    }

    #[test]
    fn the_fixture_stream_decodes_exactly() {
        let events = decode_all(&fixture()).expect("decodes");
        assert_eq!(
            events,
            vec![
                StreamEvent::Start {
                    id: Some("ag4pavQTzLrj4Q-XkKnZBA".into()),
                    model: Some("gemini-2.5-flash".into()),
                },
                StreamEvent::Text("Four.".into()),
                StreamEvent::Finish(FinishReason::Stop),
                StreamEvent::Usage(Usage {
                    input_tokens: 51,
                    output_tokens: 2,
                    ..Usage::default()
                }),
            ]
        );
    }

    /// A stream with multi-byte UTF-8 (2, 3 and 4 bytes), LF and CRLF framing, `data:` with
    /// and without a space, a comment, thoughts, a signed call and a finish after it.
    const SYNTHETIC: &str = concat!(
        ": keep-alive\n\n",
        "data:{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Pensé…\",\"thought\":true}]},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":9,\"thoughtsTokenCount\":3},\"modelVersion\":\"gemini-3-pro-preview\",\"responseId\":\"r-1\"}\n\n",
        "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Zürich 🌤 \"},{\"text\":\"晴れ\"}]},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":3,\"thoughtsTokenCount\":3}}\r\n\r\n",
        "event: ignored\r\ndata: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"get_weather\",\"args\":{\"city\":\"Zürich\"}},\"thoughtSignature\":\"c2ln\"}]},\"index\":0}]}\r\n\r\n",
        "data: {\"candidates\":[{\"content\":{\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":9,\"cachedContentTokenCount\":4,\"candidatesTokenCount\":8,\"thoughtsTokenCount\":3}}\r\n\r\n",
    );

    fn synthetic_events(call_id: &str) -> Vec<StreamEvent> {
        vec![
            StreamEvent::Start {
                id: Some("r-1".into()),
                model: Some("gemini-3-pro-preview".into()),
            },
            StreamEvent::Reasoning {
                text: "Pensé…".into(),
                signature: None,
            },
            StreamEvent::Text("Zürich 🌤 ".into()),
            StreamEvent::Text("晴れ".into()),
            StreamEvent::ToolCall {
                id: call_id.into(),
                name: "get_weather".into(),
                signature: Some("c2ln".into()),
            },
            StreamEvent::ToolArguments("{\"city\":\"Zürich\"}".into()),
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input_tokens: 9,
                cached_input_tokens: 4,
                cache_write_tokens: 0,
                output_tokens: 11,
                reasoning_tokens: 3,
            }),
        ]
    }

    /// Synthesised call ids differ per decode: compared after taking the one decoded.
    fn call_id(events: &[StreamEvent]) -> String {
        events
            .iter()
            .find_map(|e| match e {
                StreamEvent::ToolCall { id, .. } => Some(id.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn the_synthetic_stream_decodes_exactly() {
        let events = decode_all(SYNTHETIC.as_bytes()).expect("decodes");
        let id = call_id(&events);
        assert!(id.starts_with("call_"), "{id}");
        assert_eq!(events, synthetic_events(&id));
    }

    fn same_ignoring_call_ids(a: &[StreamEvent], b: &[StreamEvent]) -> bool {
        let strip = |events: &[StreamEvent]| -> Vec<StreamEvent> {
            events
                .iter()
                .cloned()
                .map(|e| match e {
                    StreamEvent::ToolCall {
                        name, signature, ..
                    } => StreamEvent::ToolCall {
                        id: String::new(),
                        name,
                        signature,
                    },
                    other => other,
                })
                .collect()
        };
        strip(a) == strip(b)
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for input in [fixture(), SYNTHETIC.as_bytes().to_vec()] {
            let whole = decode_all(&input).expect("whole decodes");
            for at in 0..=input.len() {
                let (a, b) = input.split_at(at);
                let split = decode_pieces(&[a, b]).unwrap_or_else(|e| panic!("split at {at}: {e}"));
                assert!(
                    same_ignoring_call_ids(&whole, &split),
                    "split at {at}: {split:?}"
                );
            }
            // Byte by byte.
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            let one_by_one = decode_pieces(&bytes).expect("byte by byte");
            assert!(same_ignoring_call_ids(&whole, &one_by_one));
        }
    }

    #[test]
    fn random_splits_give_the_same_events() {
        let inputs = [fixture(), SYNTHETIC.as_bytes().to_vec()];
        let wholes: Vec<_> = inputs
            .iter()
            .map(|i| decode_all(i).expect("decodes"))
            .collect();
        let mut fuzz = crate::fuzz::Budget::new("gemini stream splits", 500);
        while fuzz.more() {
            let k = fuzz.rng.usize(..inputs.len());
            let input = &inputs[k];
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < input.len() {
                let n = fuzz.rng.usize(1..=(input.len() - at).min(40));
                pieces.push(&input[at..at + n]);
                at += n;
            }
            let got = decode_pieces(&pieces).expect("decodes");
            assert!(same_ignoring_call_ids(&wholes[k], &got), "{got:?}");
        }
    }

    #[test]
    fn error_events_truncation_and_garbage_are_errors() {
        let error = b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}]}\r\n\r\ndata: {\"error\":{\"code\":500,\"message\":\"An internal error has occurred.\",\"status\":\"INTERNAL\"}}\r\n\r\n";
        let mut d = Decoder::default();
        let mut out = Vec::new();
        assert_eq!(
            d.feed(error, &mut out),
            Err("INTERNAL: An internal error has occurred.".to_owned())
        );
        assert_eq!(out.len(), 2, "the text before the error was decoded");
        assert!(
            d.feed(b"data: {}\n\n", &mut out).is_err(),
            "failed stays failed"
        );

        let input = fixture();
        // Cut before the finishing chunk is whole: never Ok.
        let last = memchr::memmem::rfind(&input, b"data:").expect("two events");
        for cut in [0, 10, last, last + 30, input.len() - 5] {
            let mut d = Decoder::default();
            let mut out = Vec::new();
            let fed = d.feed(&input[..cut], &mut out);
            assert!(fed.is_err() || d.end(&mut out).is_err(), "cut at {cut}");
        }
        // The finishing chunk whole but its blank line missing still ends the stream.
        let trimmed = input.strip_suffix(b"\r\n\r\n").expect("framed");
        assert!(decode_all(trimmed).is_ok());

        for garbage in [
            &b"data: not json\n\n"[..],
            b"data: {\"candidates\":\n\n",
            b"data: [1,2]\n\n",
            b"data: \xff\xfe\n\n",
            b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{}}]}}]}\n\n",
        ] {
            assert!(decode_all(garbage).is_err(), "{garbage:?}");
        }

        let mut fuzz = crate::fuzz::Budget::new("gemini stream garbage", 3_000);
        let pieces: [&[u8]; 12] = [
            b"data: ",
            b"data:",
            b"{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\xc3\xa9\"}]},\"finishReason\":\"STOP\"}]}",
            b"{\"error\":{\"message\":\"x\"}}",
            b"\n",
            b"\r\n",
            b"\n\n",
            b"\xf0\x9f",
            b"{",
            b"}",
            b"\"",
            b": c\n",
        ];
        while fuzz.more() {
            let rng = &mut fuzz.rng;
            let input: Vec<u8> = (0..rng.usize(0..16))
                .flat_map(|_| pieces[rng.usize(..pieces.len())].iter().copied())
                .collect();
            let mut d = Decoder::default();
            let mut out = Vec::new();
            for chunk in input.chunks(rng.usize(1..8)) {
                if d.feed(chunk, &mut out).is_err() {
                    break;
                }
            }
            let _ = d.end(&mut out);
        }
    }

    #[test]
    fn a_blocked_prompt_finishes_by_the_filter() {
        let events = decode_all(
            b"data: {\"promptFeedback\":{\"blockReason\":\"PROHIBITED_CONTENT\"},\"usageMetadata\":{\"promptTokenCount\":5},\"responseId\":\"b\"}\r\n\r\n",
        )
        .expect("decodes");
        assert_eq!(
            events,
            vec![
                StreamEvent::Start {
                    id: Some("b".into()),
                    model: None
                },
                StreamEvent::Finish(FinishReason::ContentFilter),
                StreamEvent::Usage(Usage {
                    input_tokens: 5,
                    ..Usage::default()
                }),
            ]
        );
    }
}
