//! The actor topology: who owns what, and who may restart whom.
//!
//! - [`supervisor::Supervisor`] (one per gateway) owns the proxy actors, applies configuration
//!   snapshots, enforces the proxy cap at run time and restarts a proxy whose actor died. It
//!   publishes a [`directory::Directory`] that request handlers read without a mailbox hop.
//! - [`proxy::ProxyActor`] (one per LLM proxy, on a dedicated routing arbiter) owns its routes
//!   and answers routing decisions; a semantic proxy also owns its topic-embedding index.
//! - [`embedder::EmbedderActor`] (a `SyncArbiter` pool) runs the sentence encoder, behind the
//!   caches of [`embedder::EmbedService`].
//! - [`provider::ProviderActor`] (one per HTTP worker thread) owns that thread's upstream
//!   connection pool (`awc::Client` is not `Send`), sends requests with retries and hands back
//!   bodies or `Send` channels of chunks.
//!
//! `docs/request-flow.md` draws the flow.

pub mod circuit;
pub mod directory;
pub mod embedder;
pub mod messages;
pub mod provider;
pub mod proxy;
pub mod supervisor;
