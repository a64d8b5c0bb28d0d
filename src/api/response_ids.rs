//! Response ids as each tenant sees them: scoped, so one tenant cannot use another's.
//!
//! OpenAI-native upstreams keep stored responses per upstream account, and several tenants may
//! share one account. Left as they are, the ids would let tenant B continue (and read) tenant
//! A's conversation by sending A's `previous_response_id`. So every response id the gateway
//! hands a client carries a tag, `{upstream id}_sy{16 hex}`: the first 8 bytes of an
//! HMAC-SHA256 over the tenant and the upstream id, keyed by a digest of the provider
//! account's secret. An id is accepted back only with the tag this tenant's scope computes;
//! anything else is "not found", exactly as OpenAI answers an unknown id, so nothing tells
//! whether the id exists elsewhere. The scheme is stateless: ids survive restarts and work on
//! every replica that has the same provider secret.
//!
//! What this does not cover yet: item ids (`msg_…`, `fc_…`) quoted as `item_reference` inputs,
//! and the Conversations API, which the gateway does not serve.

use crate::error::{GatewayError, quote};
use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use memchr::memmem;
use serde::Deserialize;
use sha2::{Digest, Sha256};

const TAG_SEPARATOR: &str = "_sy";
const TAG_HEX_LEN: usize = 16;

/// The id space of one tenant on one provider account.
#[derive(Clone)]
pub struct IdScope {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for IdScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdScope(*****)")
    }
}

impl IdScope {
    /// The scope of `tenant` on the provider account whose secret is `account_secret`.
    pub fn new(account_secret: &[u8], tenant: &str) -> Self {
        let key = Sha256::new()
            .chain_update(b"switchyard response ids v1\0")
            .chain_update(account_secret)
            .finalize();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(tenant.as_bytes());
        mac.update(b"\0");
        Self { mac }
    }

    fn tag(&self, upstream_id: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(upstream_id.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..TAG_HEX_LEN / 2])
    }

    /// The id the client sees for `upstream_id`.
    pub fn expose(&self, upstream_id: &str) -> String {
        format!("{upstream_id}{TAG_SEPARATOR}{}", self.tag(upstream_id))
    }

    /// The upstream id behind an id the client sent, or OpenAI's "not found" for an id this
    /// scope did not issue.
    pub fn resolve<'a>(&self, visible: &'a str) -> Result<&'a str, GatewayError> {
        visible
            .rsplit_once(TAG_SEPARATOR)
            .filter(|(id, tag)| !id.is_empty() && tag.len() == TAG_HEX_LEN && *tag == self.tag(id))
            .map(|(id, _)| id)
            .ok_or_else(|| {
                GatewayError::invalid(
                    format!("Previous response with id '{}' not found.", quote(visible)),
                    Some("previous_response_id"),
                    Some("previous_response_not_found"),
                )
            })
    }
}

/// Rewrites the upstream ids in a Responses answer (a whole body, or stream events in order)
/// into the ids the client sees.
#[derive(Debug)]
pub struct IdRewriter {
    scope: IdScope,
    /// `"upstream"` → `"visible"`, quotes included, so only whole JSON strings match.
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The answer's own id has been seen.
    learned: bool,
}

/// The ids a response object carries.
#[derive(Deserialize)]
struct ResponseIds<'a> {
    #[serde(borrow)]
    id: Option<&'a str>,
}

/// A Responses stream event that carries the response object.
#[derive(Deserialize)]
struct EventIds<'a> {
    #[serde(borrow)]
    response: Option<ResponseIds<'a>>,
}

impl IdRewriter {
    /// `previous`: the request's `previous_response_id` as the client sent it and as it went
    /// upstream, echoed back in the answer.
    pub fn new(scope: IdScope, previous: Option<(&str, &str)>) -> Self {
        let mut this = Self {
            scope,
            pairs: Vec::new(),
            learned: false,
        };
        if let Some((visible, upstream)) = previous {
            this.pairs.push((quoted(upstream), quoted(visible)));
        }
        this
    }

    fn learn(&mut self, upstream_id: &str) {
        let visible = self.scope.expose(upstream_id);
        self.pairs.push((quoted(upstream_id), quoted(&visible)));
        self.learned = true;
    }

    /// A whole (non-streaming) response object.
    pub fn body(&mut self, body: Bytes) -> Bytes {
        if let Ok(ResponseIds { id: Some(id) }) = serde_json::from_slice(&body) {
            self.learn(id);
        }
        self.apply(body)
    }

    /// Whole stream events, in order; the first one carrying the response object names it.
    pub fn events(&mut self, events: Bytes) -> Bytes {
        if !self.learned {
            let id = events
                .split(|b| *b == b'\n')
                .filter_map(|line| line.strip_prefix(b"data:"))
                .find_map(
                    |data| match serde_json::from_slice::<EventIds<'_>>(data.trim_ascii()) {
                        Ok(EventIds {
                            response: Some(ResponseIds { id: Some(id) }),
                        }) => Some(id.to_owned()),
                        _ => None,
                    },
                );
            if let Some(id) = id {
                self.learn(&id);
            }
        }
        self.apply(events)
    }

    fn apply(&self, mut bytes: Bytes) -> Bytes {
        for (from, to) in &self.pairs {
            if let Some(replaced) = replace_all(&bytes, from, to) {
                bytes = replaced;
            }
        }
        bytes
    }
}

fn quoted(s: &str) -> Vec<u8> {
    serde_json::Value::from(s).to_string().into_bytes()
}

/// `haystack` with every `from` replaced by `to`; `None` when there is none.
fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Option<Bytes> {
    let mut hits = memmem::find_iter(haystack, from).peekable();
    hits.peek()?;
    let mut out = BytesMut::with_capacity(haystack.len() + 32);
    let mut copied = 0;
    for at in hits {
        out.extend_from_slice(&haystack[copied..at]);
        out.extend_from_slice(to);
        copied = at + from.len();
    }
    out.extend_from_slice(&haystack[copied..]);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_resolve_only_in_the_scope_that_issued_them() {
        let a = IdScope::new(b"sk-account", "acme");
        let b = IdScope::new(b"sk-account", "globex");
        let other_account = IdScope::new(b"sk-other", "acme");
        let visible = a.expose("resp_123");
        assert_eq!(visible.len(), "resp_123".len() + 3 + 16);
        assert_eq!(a.resolve(&visible).expect("own id"), "resp_123");
        for (scope, id) in [
            (&b, visible.as_str()),
            (&other_account, visible.as_str()),
            (&a, "resp_123"),
            (&a, "resp_123_sy0000000000000000"),
            (&a, &visible[..visible.len() - 1]),
        ] {
            match scope.resolve(id) {
                Err(GatewayError::InvalidRequest { param, code, .. }) => {
                    assert_eq!(param.as_deref(), Some("previous_response_id"));
                    assert_eq!(code, Some("previous_response_not_found"));
                }
                other => panic!("{id}: expected not found, got {other:?}"),
            }
        }
    }

    #[test]
    fn bodies_and_streams_get_the_visible_ids_everywhere() {
        let scope = IdScope::new(b"k", "acme");
        let prev_visible = scope.expose("resp_prev");
        let mut rw = IdRewriter::new(scope.clone(), Some((&prev_visible, "resp_prev")));
        let body = Bytes::from_static(
            br#"{"id":"resp_new","previous_response_id":"resp_prev","output":[{"id":"msg_1","text":"resp_new"}]}"#,
        );
        let out = String::from_utf8(rw.body(body).to_vec()).expect("utf8");
        let new_visible = scope.expose("resp_new");
        assert_eq!(
            out,
            format!(
                r#"{{"id":"{new_visible}","previous_response_id":"{prev_visible}","output":[{{"id":"msg_1","text":"{new_visible}"}}]}}"#
            )
        );

        let mut rw = IdRewriter::new(scope.clone(), None);
        let first = rw.events(Bytes::from_static(
            b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_s\"}}\n\n",
        ));
        let visible = scope.expose("resp_s");
        assert_eq!(
            first,
            Bytes::from(format!(
                "event: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"id\":\"{visible}\"}}}}\n\n"
            ))
        );
        let later = rw.events(Bytes::from_static(
            b"event: response.completed\ndata: {\"response\":{\"id\":\"resp_s\"}}\n\n",
        ));
        assert_eq!(memmem::find_iter(&later, visible.as_bytes()).count(), 1);
        assert_eq!(memmem::find_iter(&later, b"\"resp_s\"").count(), 0);
    }
}
