//! Every message the actors exchange, in one place.
//!
//! Each message is a documented struct with its result type. Messages that wait on I/O are
//! answered with futures by their handlers, so no mailbox is held while an upstream answers.

use crate::config::{Provider, Proxy, Snapshot};
use crate::error::GatewayError;
use crate::providers::{UpstreamCall, UpstreamResponse};
use crate::routing::Decision;
use actix::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Proxy actor: pick the route for a request naming `model` whose routing text is `text`
/// (semantic proxies read the text, model-based ones the model). Answered with a future: the
/// mailbox never waits on inference.
#[derive(Message)]
#[rtype(result = "Result<Decision, GatewayError>")]
pub struct Decide {
    pub model: Option<String>,
    pub text: Option<String>,
}

/// Proxy actor: the decision for `text` with every topic's score (admin explain).
#[derive(Message)]
#[rtype(result = "Result<serde_json::Value, GatewayError>")]
pub struct Explain {
    pub text: String,
}

/// Embedding pool: one unit vector per text, in order.
#[derive(Message)]
#[rtype(result = "Result<Vec<Vec<f32>>, crate::embedding::EmbedError>")]
pub struct Embed {
    pub texts: Vec<String>,
}

/// Embedding pool: utterance vectors through the disk cache; also the number computed (misses).
#[derive(Message)]
#[rtype(result = "Result<(Vec<Vec<f32>>, usize), crate::embedding::EmbedError>")]
pub struct EmbedUtterances {
    pub texts: Vec<String>,
}

/// Proxy actor: a reload changed this proxy's configuration.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpdateProxy {
    pub proxy: Arc<Proxy>,
    pub providers: Arc<[Arc<Provider>]>,
}

/// Supervisor: serve this tenant set. Refused whole when it breaks the proxy cap.
#[derive(Message)]
#[rtype(result = "Result<usize, String>")]
pub struct ApplySnapshot(pub Arc<Snapshot>);

/// Supervisor: a proxy actor stopped answering (its mailbox closed); start it again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RestartProxy {
    pub tenant: String,
    pub proxy: String,
}

/// How long a call may take, from the route (design: per-route timeouts).
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    /// Longest wait for a stream's first event after its headers.
    pub first_byte_timeout: Duration,
    /// Longest time before the answer starts, every attempt included.
    pub deadline: Option<Duration>,
}

/// Provider actor: send a request upstream, with retries, and hand back the answer.
#[derive(Message)]
#[rtype(result = "Result<UpstreamResponse, GatewayError>")]
pub struct Call {
    pub provider: Arc<Provider>,
    pub request: UpstreamCall,
    pub limits: CallLimits,
    /// The request's scope: the call's log lines name its request id, tenant, proxy, route.
    pub scope: crate::telemetry::scope::Scope,
    /// The request's exported server span: each attempt's is its child.
    pub trace: crate::telemetry::otel::Trace,
    /// Resolves when the client's handler is dropped (the client went away): the call stops,
    /// closing its upstream connection, whatever stage it is in.
    pub client_gone: oneshot::Receiver<()>,
}
