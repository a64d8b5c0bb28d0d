//! The proxy actor: one per LLM proxy, owning its routes and, for semantic routing, its index.
//!
//! It owns the proxy's route table, which the supervisor publishes (immutable, in the directory)
//! for handlers, and takes configuration updates on reload. A model-based decision is a pure
//! lookup in that published table, made by the handler without a mailbox hop. A semantic proxy
//! builds its topic index (the embeddings of its utterances, through the disk cache) at start
//! and on every configuration change, and answers [`Decide`] with a future: the future embeds
//! the text on the embedding pool (or finds it in the request cache) and scores it, so the
//! mailbox never waits on inference. Until the first index is built, decisions wait for it;
//! while a new one builds after a reload, the previous index keeps answering with the
//! configuration it was built from.

use super::embedder::EmbedService;
use super::messages::{Decide, Explain, UpdateProxy};
use crate::config::{Provider, Proxy, RoutingMode};
use crate::error::GatewayError;
use crate::routing::semantic::{self, SemanticIndex, scoring};
use crate::routing::{self, Decision};
use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, ResponseFuture, WrapFuture};
use std::sync::Arc;
use tokio::sync::watch;

/// A built index with the configuration it was built from.
#[derive(Clone, Debug)]
pub struct ReadyIndex {
    pub proxy: Arc<Proxy>,
    pub providers: Arc<[Arc<Provider>]>,
    pub index: Arc<SemanticIndex>,
}

/// The index as decisions see it.
#[derive(Clone, Debug)]
pub enum IndexState {
    Building,
    Ready(ReadyIndex),
    Failed(String),
}

/// Owns one proxy's routes and index.
pub struct ProxyActor {
    proxy: Arc<Proxy>,
    providers: Arc<[Arc<Provider>]>,
    embed: Option<EmbedService>,
    index: watch::Sender<IndexState>,
    /// Bumped per build, so a slow build finishing after a newer one is dropped.
    generation: u64,
    /// Whether this actor counts as one pending index in the gateway's readiness.
    pending: bool,
}

impl ProxyActor {
    pub fn new(proxy: Arc<Proxy>, providers: Arc<[Arc<Provider>]>) -> Self {
        Self::with_embedder(proxy, providers, None)
    }

    /// A proxy actor that can build a semantic index with `embed`.
    pub fn with_embedder(
        proxy: Arc<Proxy>,
        providers: Arc<[Arc<Provider>]>,
        embed: Option<EmbedService>,
    ) -> Self {
        Self {
            proxy,
            providers,
            embed,
            index: watch::Sender::new(IndexState::Building),
            generation: 0,
            pending: false,
        }
    }

    fn set_pending(&mut self, pending: bool) {
        if let Some(e) = &self.embed
            && self.pending != pending
        {
            if pending {
                e.readiness.add();
            } else {
                e.readiness.done();
            }
            self.pending = pending;
        }
    }

    /// Starts building the index for the current configuration.
    fn build_index(&mut self, ctx: &mut Context<Self>) {
        if self.proxy.routing != RoutingMode::Semantic {
            return;
        }
        let Some(embed) = self.embed.clone() else {
            self.index.send_replace(IndexState::Failed(
                "the embedding model is not loaded in this gateway".into(),
            ));
            return;
        };
        if let Err(reason) = scoring::check_limits(&self.proxy) {
            tracing::error!(%reason, "semantic index refused");
            self.index.send_replace(IndexState::Failed(reason));
            // An index that cannot be built keeps the gateway not ready.
            self.set_pending(true);
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        let ready = ReadyIndex {
            proxy: self.proxy.clone(),
            providers: self.providers.clone(),
            index: Arc::default(),
        };
        if !matches!(*self.index.borrow(), IndexState::Ready(_)) {
            self.set_pending(true);
        }
        let texts: Vec<String> = scoring::topics_of(&self.proxy)
            .iter()
            .flat_map(|(t, _)| t.utterances.iter().cloned())
            .collect();
        let started = std::time::Instant::now();
        let fut = async move {
            let (vectors, computed) = embed.utterances(texts).await?;
            let index = SemanticIndex::build(&ready.proxy, vectors)?;
            Ok::<_, String>((
                ReadyIndex {
                    index: Arc::new(index),
                    ..ready
                },
                computed,
            ))
        };
        ctx.spawn(fut.into_actor(self).map(move |built, act, _ctx| {
            if generation != act.generation {
                return;
            }
            match built {
                Ok((ready, computed)) => {
                    tracing::info!(
                        tenant = %ready.proxy.tenant,
                        proxy = %ready.proxy.id,
                        topics = ready.index.topics.len(),
                        computed,
                        ms = started.elapsed().as_millis() as u64,
                        "semantic index ready"
                    );
                    act.index.send_replace(IndexState::Ready(ready));
                    act.set_pending(false);
                }
                Err(reason) => {
                    tracing::error!(proxy = %act.proxy.id, %reason, "semantic index failed");
                    if !matches!(*act.index.borrow(), IndexState::Ready(_)) {
                        act.index.send_replace(IndexState::Failed(reason));
                    }
                }
            }
        }));
    }

    /// Waits for a built index (only before the first one is ready).
    async fn ready(mut rx: watch::Receiver<IndexState>) -> Result<ReadyIndex, GatewayError> {
        loop {
            match &*rx.borrow_and_update() {
                IndexState::Ready(r) => return Ok(r.clone()),
                IndexState::Failed(reason) => {
                    return Err(GatewayError::Unavailable {
                        message: format!("Semantic routing is unavailable: {reason}"),
                    });
                }
                IndexState::Building => {}
            }
            if rx.changed().await.is_err() {
                return Err(GatewayError::Unavailable {
                    message: "The proxy is restarting; retry the request.".into(),
                });
            }
        }
    }
}

impl Actor for ProxyActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(tenant = %self.proxy.tenant, proxy = %self.proxy.id, "proxy actor started");
        self.build_index(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.set_pending(false);
    }
}

impl Handler<Decide> for ProxyActor {
    type Result = ResponseFuture<Result<Decision, GatewayError>>;

    fn handle(&mut self, msg: Decide, _ctx: &mut Self::Context) -> Self::Result {
        if self.proxy.routing == RoutingMode::Model {
            let d = routing::decide(&self.proxy, &self.providers, msg.model.as_deref());
            return Box::pin(std::future::ready(d));
        }
        let rx = self.index.subscribe();
        let embed = self.embed.clone();
        Box::pin(async move {
            let r = Self::ready(rx).await?;
            let text = msg.text.unwrap_or_default();
            let verdict = if text.is_empty() {
                let kind = embed.as_ref().map(|e| e.kind).unwrap_or_default();
                semantic::empty_text_verdict(&r.index, semantic::scoring_of(&r.proxy, kind))
            } else {
                let embed = embed.ok_or_else(|| GatewayError::Unavailable {
                    message: "Semantic routing is unavailable: no embedding model.".into(),
                })?;
                let q = embed.query(&text).await?;
                scoring::decide(&r.index, &q, semantic::scoring_of(&r.proxy, embed.kind))
            };
            semantic::decision(&r.proxy, &r.providers, &r.index, &verdict)
        })
    }
}

impl Handler<Explain> for ProxyActor {
    type Result = ResponseFuture<Result<serde_json::Value, GatewayError>>;

    fn handle(&mut self, msg: Explain, _ctx: &mut Self::Context) -> Self::Result {
        if self.proxy.routing == RoutingMode::Model {
            let id = self.proxy.id.clone();
            return Box::pin(std::future::ready(Err(GatewayError::invalid(
                format!("The proxy '{id}' routes by model; there are no topic scores to explain."),
                None,
                Some("not_semantic"),
            ))));
        }
        let rx = self.index.subscribe();
        let embed = self.embed.clone();
        Box::pin(async move {
            let r = Self::ready(rx).await?;
            let embed = embed.ok_or_else(|| GatewayError::Unavailable {
                message: "Semantic routing is unavailable: no embedding model.".into(),
            })?;
            let q = embed.query(&msg.text).await?;
            let verdict = scoring::decide(&r.index, &q, semantic::scoring_of(&r.proxy, embed.kind));
            Ok(semantic::explain(&r.proxy, &r.index, &verdict, &msg.text))
        })
    }
}

impl Handler<UpdateProxy> for ProxyActor {
    type Result = ();

    fn handle(&mut self, msg: UpdateProxy, ctx: &mut Self::Context) {
        let rebuild =
            msg.proxy.routing == RoutingMode::Semantic && !same_semantics(&self.proxy, &msg.proxy);
        self.proxy = msg.proxy;
        self.providers = msg.providers;
        if rebuild {
            self.build_index(ctx);
        } else {
            // Same topics and routes: the index stands, paired with the new configuration.
            let current = match &*self.index.borrow() {
                IndexState::Ready(r) => Some(r.index.clone()),
                _ => None,
            };
            if let Some(index) = current {
                self.index.send_replace(IndexState::Ready(ReadyIndex {
                    proxy: self.proxy.clone(),
                    providers: self.providers.clone(),
                    index,
                }));
            }
        }
    }
}

/// Whether two configurations give the same index: same topics, utterances and targets.
fn same_semantics(a: &Proxy, b: &Proxy) -> bool {
    let key = |p: &Proxy| {
        scoring::topics_of(p)
            .into_iter()
            .map(|(t, target)| (t.name.clone(), t.utterances.clone(), target))
            .collect::<Vec<_>>()
    };
    a.routing == b.routing && key(a) == key(b)
}

/// Tests only: makes the actor panic inside a handler, as a bug would.
#[cfg(test)]
#[derive(actix::Message)]
#[rtype(result = "()")]
pub(crate) struct Crash;

#[cfg(test)]
impl Handler<Crash> for ProxyActor {
    type Result = ();

    fn handle(&mut self, _msg: Crash, _ctx: &mut Self::Context) {
        panic!("a bug in proxy {}", self.proxy.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedding::{Embedder, test_model_dir};
    use crate::routing::semantic::eval::Suite;

    fn suite(topics: usize) -> Suite {
        let topics: Vec<serde_json::Value> = (0..topics)
            .map(|t| {
                serde_json::json!({"name": format!("t{t}"), "route": format!("r{t}"),
                "utterances": [format!("book a flight to city number {t}")]})
            })
            .collect();
        serde_json::from_value(serde_json::json!({"name": "s", "topics": topics,
            "deny_topics": [{"name": "jokes", "utterances": ["tell me a joke"]}], "cases": []}))
        .expect("suite")
    }

    fn providers() -> Arc<[Arc<Provider>]> {
        vec![Arc::new(Provider::placeholder(
            "eval",
            "http://127.0.0.1:1/v1",
        ))]
        .into()
    }

    fn decide(text: &str) -> Decide {
        Decide {
            model: Some("ignored".into()),
            text: Some(text.into()),
        }
    }

    #[actix_web::test]
    async fn decisions_wait_for_the_first_index_and_broken_limits_answer_503() {
        let model = match Embedder::load_dir(&test_model_dir()) {
            Ok(m) => Arc::new(crate::embedding::Encoder::Transformer(m)),
            Err(err) => panic!("{err}"),
        };
        let service = EmbedService::start(model, 1, None);
        let ok = ProxyActor::with_embedder(
            Arc::new(suite(2).proxy(0.36)),
            providers(),
            Some(service.clone()),
        )
        .start();
        // Sent at once: the index is still building, so the decision waits for it.
        let d = ok
            .send(decide("tell me a joke please"))
            .await
            .expect("mailbox");
        match d {
            Err(GatewayError::Denied { topic, .. }) => assert_eq!(topic, "jokes"),
            other => panic!("expected a deny, got {other:?}"),
        }
        let d = ok
            .send(decide("book a flight to city number 1"))
            .await
            .expect("mailbox")
            .expect("routed");
        assert_eq!((d.route, d.fallback), (1, false));
        assert_eq!(d.semantic.and_then(|m| m.topic).as_deref(), Some("t1"));
        let readiness = service.readiness.clone();
        assert_eq!(readiness.pending(), 0);

        let broken =
            ProxyActor::with_embedder(Arc::new(suite(7).proxy(0.36)), providers(), Some(service))
                .start();
        match broken.send(decide("anything")).await.expect("mailbox") {
            Err(GatewayError::Unavailable { message }) => {
                assert!(message.contains("7 topics, at most 6"), "{message}")
            }
            other => panic!("expected a 503, got {other:?}"),
        }
        assert_eq!(
            readiness.pending(),
            1,
            "a failed index keeps /readyz at 503"
        );
    }
}
