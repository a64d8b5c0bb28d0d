//! Stored responses: what makes `previous_response_id` and `GET /responses/{id}` work on
//! providers without a Responses API (Gemini, Bedrock).
//!
//! Each translated response created with `store` (the default) is kept under its tenant and
//! id: the whole conversation up to and including the answer (canonical messages, with tool
//! call ids and provider signatures, so a follow-up replays it exactly), the `response`
//! object as the client saw it, and the route that answered. The [`ResponseStore`] trait is
//! the seam for a shared backend; [`MemoryStore`] is the default, in-process and bounded by
//! bytes and by age, so a burst of large conversations evicts the oldest instead of growing
//! without limit.

use super::canonical::{Message, Part};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// One stored response.
#[derive(Debug)]
pub struct StoredResponse {
    /// The conversation including this response's answer (instructions excluded: OpenAI does
    /// not carry them over to a follow-up).
    pub messages: Vec<Message>,
    /// The `response` object, JSON.
    pub object: Bytes,
    /// The route that answered (a follow-up on another provider cannot replay provider
    /// signatures, so it is worth knowing).
    pub route: String,
}

impl StoredResponse {
    /// About how many bytes this entry holds, for the store's bound.
    fn weight(&self) -> u32 {
        let parts: usize = self
            .messages
            .iter()
            .flat_map(|m| &m.parts)
            .map(|p| match p {
                Part::Text { text } => text.len(),
                Part::Image(i) => i.source.to_url().len(),
                Part::ToolCall(c) => {
                    c.id.len()
                        + c.name.len()
                        + c.arguments.len()
                        + c.signature.as_ref().map_or(0, String::len)
                }
                Part::ToolResult(r) => r.call_id.len() + r.content.len(),
                Part::Reasoning { text, signature } => {
                    text.len() + signature.as_ref().map_or(0, String::len)
                }
            } + 64)
            .sum();
        u32::try_from(parts + self.object.len() + self.route.len() + 128).unwrap_or(u32::MAX)
    }
}

/// Where stored responses live. Keys are per tenant: one tenant can never read another's.
pub trait ResponseStore: Send + Sync {
    fn get(&self, tenant: &str, id: &str) -> Option<Arc<StoredResponse>>;
    fn put(&self, tenant: &str, id: &str, response: StoredResponse);
}

/// The in-process store: bounded in bytes, entries expire `ttl` after they were stored.
pub struct MemoryStore {
    cache: moka::sync::Cache<(String, String), Arc<StoredResponse>>,
}

impl MemoryStore {
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &(String, String), v: &Arc<StoredResponse>| v.weight())
            .time_to_live(ttl)
            .build();
        Self { cache }
    }
}

impl ResponseStore for MemoryStore {
    fn get(&self, tenant: &str, id: &str) -> Option<Arc<StoredResponse>> {
        self.cache.get(&(tenant.to_owned(), id.to_owned()))
    }

    fn put(&self, tenant: &str, id: &str, response: StoredResponse) {
        self.cache
            .insert((tenant.to_owned(), id.to_owned()), Arc::new(response));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::canonical::Role;

    fn entry(text: &str) -> StoredResponse {
        StoredResponse {
            messages: vec![Message {
                role: Role::User,
                parts: vec![Part::text(text)],
            }],
            object: Bytes::from_static(b"{}"),
            route: "r".into(),
        }
    }

    #[test]
    fn entries_are_per_tenant() {
        let store = MemoryStore::new(1 << 20, Duration::from_secs(60));
        store.put("acme", "resp_1", entry("hello"));
        assert!(store.get("acme", "resp_1").is_some());
        assert!(store.get("globex", "resp_1").is_none());
        assert!(store.get("acme", "resp_2").is_none());
    }

    #[test]
    fn the_byte_bound_evicts() {
        // Each entry weighs about 10 kB; room for about ten.
        let store = MemoryStore::new(100_000, Duration::from_secs(60));
        let big = "x".repeat(10_000);
        for i in 0..100 {
            store.put("t", &format!("resp_{i}"), entry(&big));
        }
        store.cache.run_pending_tasks();
        let kept = (0..100)
            .filter(|i| store.get("t", &format!("resp_{i}")).is_some())
            .count();
        assert!((1..=10).contains(&kept), "kept {kept} of 100");
        assert!(store.cache.weighted_size() <= 100_000);
    }
}
