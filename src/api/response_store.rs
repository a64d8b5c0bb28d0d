//! Stored responses: what makes `previous_response_id` and `GET /responses/{id}` work on
//! providers without a Responses API (Gemini, Bedrock).
//!
//! Each translated response created with `store` (the default) is kept under its tenant and
//! id: the whole conversation up to and including the answer (canonical messages, with tool
//! call ids and provider signatures, so a follow-up replays it exactly), the `response`
//! object as the client saw it, and the route that answered. [`ResponseStore`] is the seam,
//! asynchronous and fallible (a shared backend can be down: that is a [`StoreError`], a 503,
//! never a silent "not found"). [`MemoryStore`] is the default, in-process and bounded by
//! bytes and by age, so a burst of large conversations evicts the oldest instead of growing
//! without limit. [`RedisStore`] (`--response-store redis`) keeps them in the gateway's Redis,
//! so a follow-up finds its response on any replica; entries expire after the same TTL, and
//! one larger than [`MAX_ENTRY_BYTES`] is refused with a warning rather than written.

use super::canonical::{Message, Part};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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

/// Which store keeps responses (`--response-store`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// In process, bounded by `--response-store-mib`: a follow-up must reach the same replica.
    #[default]
    Memory,
    /// In the Redis of `--redis`, shared by replicas.
    Redis,
}

/// The store `backend` names, its entries kept `ttl`: `max_bytes` bounds the memory store;
/// the Redis one needs `redis` (a start-up error without it).
pub async fn open(
    backend: Backend,
    redis: Option<&str>,
    max_bytes: u64,
    ttl: Duration,
) -> Result<Arc<dyn ResponseStore>, String> {
    Ok(match backend {
        Backend::Memory => Arc::new(MemoryStore::new(max_bytes, ttl)),
        Backend::Redis => {
            let url = redis.ok_or(
                "--response-store redis needs --redis URL (SWITCHYARD_REDIS): the Redis the replicas share",
            )?;
            Arc::new(RedisStore::connect(url, ttl).await?)
        }
    })
}

/// The response store could not be read or written (a shared backend down or too slow).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A stored response, or `None` when there is none under that tenant and id.
pub type Lookup = Result<Option<Arc<StoredResponse>>, StoreError>;

/// Where stored responses live. Keys are per tenant: one tenant can never read another's.
/// `put`'s future owns what it needs, so a caller can spawn it or hold an answer's end on it.
pub trait ResponseStore: Send + Sync {
    fn get<'a>(&'a self, tenant: &'a str, id: &'a str) -> BoxFuture<'a, Lookup>;
    fn put(
        &self,
        tenant: &str,
        id: &str,
        response: StoredResponse,
    ) -> BoxFuture<'static, Result<(), StoreError>>;
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
    fn get<'a>(&'a self, tenant: &'a str, id: &'a str) -> BoxFuture<'a, Lookup> {
        let found = self.cache.get(&(tenant.to_owned(), id.to_owned()));
        Box::pin(std::future::ready(Ok(found)))
    }

    fn put(
        &self,
        tenant: &str,
        id: &str,
        response: StoredResponse,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.cache
            .insert((tenant.to_owned(), id.to_owned()), Arc::new(response));
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The largest entry written to Redis, serialized; a larger one is refused with a warning.
pub const MAX_ENTRY_BYTES: usize = 16 << 20;

/// How long one Redis read or write may take before it is a [`StoreError`].
const REDIS_WAIT: Duration = Duration::from_secs(2);

/// The store in Redis, shared by replicas: one string per response, expiring after `ttl`.
pub struct RedisStore {
    conn: redis::aio::ConnectionManager,
    ttl: Duration,
}

/// A stored response as written to Redis (`object` inline as the JSON it is).
#[derive(Serialize)]
struct WireOut<'a> {
    messages: &'a [Message],
    object: &'a RawValue,
    route: &'a str,
}

#[derive(Deserialize)]
struct WireIn {
    messages: Vec<Message>,
    object: Box<RawValue>,
    route: String,
}

impl RedisStore {
    /// Connects with the gateway's Redis connector (`governance::redis_manager`).
    pub async fn connect(url: &str, ttl: Duration) -> Result<Self, String> {
        let conn = crate::governance::redis_manager(url).await?;
        Ok(Self { conn, ttl })
    }

    /// `switchyard:resp:{tenant's length}:{tenant}:{id}`: the length prefix keeps a tenant
    /// whose name holds `:` from naming another tenant's key.
    fn key(tenant: &str, id: &str) -> String {
        format!("switchyard:resp:{}:{tenant}:{id}", tenant.len())
    }

    fn encode(response: &StoredResponse) -> Result<Vec<u8>, String> {
        let object = std::str::from_utf8(&response.object).map_err(|e| e.to_string())?;
        let object: &RawValue = serde_json::from_str(object).map_err(|e| e.to_string())?;
        serde_json::to_vec(&WireOut {
            messages: &response.messages,
            object,
            route: &response.route,
        })
        .map_err(|e| e.to_string())
    }

    fn decode(bytes: &[u8]) -> Result<StoredResponse, String> {
        let wire: WireIn = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        Ok(StoredResponse {
            messages: wire.messages,
            object: Bytes::from(String::from(Box::<str>::from(wire.object))),
            route: wire.route,
        })
    }
}

/// `op`, failing as a [`StoreError`] when Redis errs or is slower than [`REDIS_WAIT`].
async fn within<T>(
    what: &str,
    op: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REDIS_WAIT, op).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(err)) => Err(StoreError(format!("redis {what}: {err}"))),
        Err(_) => Err(StoreError(format!(
            "redis {what}: no answer within {REDIS_WAIT:?}"
        ))),
    }
}

impl ResponseStore for RedisStore {
    fn get<'a>(&'a self, tenant: &'a str, id: &'a str) -> BoxFuture<'a, Lookup> {
        let mut conn = self.conn.clone();
        Box::pin(async move {
            let cmd = redis::cmd("GET").arg(Self::key(tenant, id)).to_owned();
            let found: Option<Vec<u8>> = within("GET", cmd.query_async(&mut conn)).await?;
            let Some(bytes) = found else {
                return Ok(None);
            };
            match Self::decode(&bytes) {
                Ok(stored) => Ok(Some(Arc::new(stored))),
                Err(err) => {
                    tracing::warn!(%err, "a stored response does not decode: treated as absent");
                    Ok(None)
                }
            }
        })
    }

    fn put(
        &self,
        tenant: &str,
        id: &str,
        response: StoredResponse,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let value = match Self::encode(&response) {
            Ok(v) if v.len() <= MAX_ENTRY_BYTES => v,
            Ok(v) => {
                tracing::warn!(
                    bytes = v.len(),
                    max = MAX_ENTRY_BYTES,
                    "response too large for the shared store: not stored"
                );
                return Box::pin(std::future::ready(Ok(())));
            }
            Err(err) => {
                tracing::warn!(%err, "response does not encode: not stored");
                return Box::pin(std::future::ready(Ok(())));
            }
        };
        let cmd = redis::cmd("SET")
            .arg(Self::key(tenant, id))
            .arg(value)
            .arg("PX")
            .arg(
                u64::try_from(self.ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .to_owned();
        let mut conn = self.conn.clone();
        Box::pin(async move { within("SET", cmd.query_async::<()>(&mut conn)).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::canonical::Role;
    use futures_util::FutureExt;

    /// The memory store's answer, which is ready at once.
    fn get(store: &MemoryStore, tenant: &str, id: &str) -> Option<Arc<StoredResponse>> {
        store
            .get(tenant, id)
            .now_or_never()
            .expect("ready")
            .expect("no error")
    }

    fn put(store: &MemoryStore, tenant: &str, id: &str, response: StoredResponse) {
        store
            .put(tenant, id, response)
            .now_or_never()
            .expect("ready")
            .expect("no error");
    }

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
        put(&store, "acme", "resp_1", entry("hello"));
        assert!(get(&store, "acme", "resp_1").is_some());
        assert!(get(&store, "globex", "resp_1").is_none());
        assert!(get(&store, "acme", "resp_2").is_none());
    }

    #[test]
    fn the_byte_bound_evicts() {
        // Each entry weighs about 10 kB; room for about ten.
        let store = MemoryStore::new(100_000, Duration::from_secs(60));
        let big = "x".repeat(10_000);
        for i in 0..100 {
            put(&store, "t", &format!("resp_{i}"), entry(&big));
        }
        store.cache.run_pending_tasks();
        let kept = (0..100)
            .filter(|i| get(&store, "t", &format!("resp_{i}")).is_some())
            .count();
        assert!((1..=10).contains(&kept), "kept {kept} of 100");
        assert!(store.cache.weighted_size() <= 100_000);
    }

    #[test]
    fn redis_keys_cannot_be_forged_across_tenants() {
        // Without the length prefix both would be `switchyard:resp:a:b:c`.
        assert_ne!(RedisStore::key("a:b", "c"), RedisStore::key("a", "b:c"));
        assert_eq!(
            RedisStore::key("acme", "resp_1"),
            "switchyard:resp:4:acme:resp_1"
        );
    }

    #[test]
    fn the_redis_encoding_round_trips() {
        let mut stored = entry("hello \"quoted\" 你好");
        stored.object = Bytes::from_static(br#"{"id":"resp_1","output":[{"text":"x"}]}"#);
        let bytes = RedisStore::encode(&stored).expect("encodes");
        let back = RedisStore::decode(&bytes).expect("decodes");
        assert_eq!(back.messages, stored.messages);
        assert_eq!(back.object, stored.object);
        assert_eq!(back.route, stored.route);
    }
}
