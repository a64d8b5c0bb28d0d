//! The supervisor: owns every proxy actor and the cap on how many there are.
//!
//! It applies configuration snapshots (starting, updating and stopping proxy actors), refuses
//! any snapshot or start that would exceed [`MAX_PROXIES`] so no path can pass the cap, restarts
//! a proxy actor whose mailbox closed (a panic in a handler ends the actor, not the arbiter),
//! and publishes the resulting [`Directory`] for request handlers.

use super::directory::{Directory, DirectoryHandle, ProxyHandle, TenantEntry};
use super::embedder::EmbedService;
use super::messages::{ApplySnapshot, RestartProxy, UpdateProxy};
use super::proxy::ProxyActor;
use crate::config::{MAX_PROXIES, Provider, Proxy, Snapshot};
use actix::{Actor, Addr, Arbiter, ArbiterHandle, Context, Handler};
use std::collections::HashMap;
use std::sync::Arc;

type ProxyKey = (String, String);

/// Owns the proxy actors.
pub struct Supervisor {
    /// The thread proxy actors run on, apart from the HTTP workers.
    arbiter: ArbiterHandle,
    children: HashMap<ProxyKey, Addr<ProxyActor>>,
    snapshot: Arc<Snapshot>,
    directory: DirectoryHandle,
    cap: usize,
    /// The embedding pool semantic proxies build their indexes with (none: no model loaded).
    embed: Option<EmbedService>,
}

impl Supervisor {
    /// A supervisor publishing into `directory`, with the gateway-wide cap.
    pub fn new(directory: DirectoryHandle) -> Self {
        Self::with_cap(directory, MAX_PROXIES)
    }

    /// Same, with a lower cap (tests).
    pub fn with_cap(directory: DirectoryHandle, cap: usize) -> Self {
        let arbiter = Arbiter::new().handle();
        Self {
            arbiter,
            children: HashMap::new(),
            snapshot: Arc::default(),
            directory,
            cap: cap.min(MAX_PROXIES),
            embed: None,
        }
    }

    /// Gives semantic proxies the embedding pool.
    pub fn with_embedder(mut self, embed: EmbedService) -> Self {
        self.embed = Some(embed);
        self
    }

    /// Starts one proxy actor, unless that would pass the cap.
    fn start_child(
        &mut self,
        proxy: Arc<Proxy>,
        providers: Arc<[Arc<Provider>]>,
    ) -> Result<Addr<ProxyActor>, String> {
        if self.children.len() >= self.cap {
            return Err(format!(
                "refusing to start proxy {}/{}: the gateway already runs {} proxies, the maximum",
                proxy.tenant, proxy.id, self.cap
            ));
        }
        let key = (proxy.tenant.clone(), proxy.id.clone());
        let embed = self.embed.clone();
        let addr = ProxyActor::start_in_arbiter(&self.arbiter, move |_| {
            ProxyActor::with_embedder(proxy, providers, embed)
        });
        self.children.insert(key, addr.clone());
        Ok(addr)
    }

    fn publish(&self) {
        let mut tenants = crate::fxhash::FxHashMap::default();
        for (id, tenant) in &self.snapshot.tenants {
            let providers = &tenant.providers;
            let proxies = tenant
                .proxies
                .iter()
                .filter_map(|(pid, routes)| {
                    let addr = self.children.get(&(id.clone(), pid.clone()))?.clone();
                    let handle = ProxyHandle {
                        addr,
                        routes: routes.clone(),
                        providers: providers.clone(),
                    };
                    Some((pid.clone(), handle))
                })
                .collect();
            tenants.insert(
                id.clone(),
                TenantEntry {
                    tenant: tenant.clone(),
                    proxies,
                },
            );
        }
        self.directory.replace(Directory { tenants });
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;
}

impl Handler<ApplySnapshot> for Supervisor {
    type Result = Result<usize, String>;

    fn handle(
        &mut self,
        ApplySnapshot(snapshot): ApplySnapshot,
        _ctx: &mut Self::Context,
    ) -> Self::Result {
        let count = snapshot.proxy_count();
        if count > self.cap {
            return Err(format!(
                "the configuration has {count} proxies; a gateway serves at most {}",
                self.cap
            ));
        }
        // Stop what is gone first, so the cap counts only what will remain.
        self.children.retain(|(tenant, proxy), _| {
            snapshot
                .tenants
                .get(tenant)
                .is_some_and(|t| t.proxies.contains_key(proxy))
        });
        for tenant in snapshot.tenants.values() {
            let providers = &tenant.providers;
            for proxy in tenant.proxies.values() {
                match self.children.get(&(tenant.id.clone(), proxy.id.clone())) {
                    Some(addr) if addr.connected() => addr.do_send(UpdateProxy {
                        proxy: proxy.clone(),
                        providers: providers.clone(),
                    }),
                    _ => {
                        self.children.remove(&(tenant.id.clone(), proxy.id.clone()));
                        self.start_child(proxy.clone(), providers.clone())?;
                    }
                }
            }
        }
        self.snapshot = snapshot;
        self.publish();
        tracing::info!(
            tenants = self.snapshot.tenants.len(),
            proxies = count,
            "configuration applied"
        );
        Ok(count)
    }
}

impl Handler<RestartProxy> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: RestartProxy, _ctx: &mut Self::Context) {
        let key = (msg.tenant, msg.proxy);
        if self.children.get(&key).is_some_and(Addr::connected) {
            return; // already restarted by an earlier report
        }
        let Some(tenant) = self.snapshot.tenants.get(&key.0).cloned() else {
            return;
        };
        let Some(proxy) = tenant.proxies.get(&key.1).cloned() else {
            return;
        };
        self.children.remove(&key);
        tracing::warn!(tenant = %key.0, proxy = %key.1, "proxy actor died; restarting it");
        match self.start_child(proxy, tenant.providers.clone()) {
            Ok(_) => self.publish(),
            Err(err) => tracing::error!(%err, "could not restart proxy actor"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::messages::Decide;
    use crate::config::{ProviderKind, Route, RoutingMode, RoutingText, Tenant};
    use std::collections::BTreeMap;

    fn snapshot(proxies: usize) -> Arc<Snapshot> {
        let provider = Arc::new(Provider::placeholder("openai", "http://127.0.0.1:1/v1"));
        let proxies = (0..proxies)
            .map(|i| {
                let proxy = Proxy {
                    tenant: "t".into(),
                    id: format!("p{i}"),
                    routing: RoutingMode::Model,
                    routes: vec![Route {
                        name: "r".into(),
                        provider: 0,
                        provider_name: "openai".into(),
                        provider_kind: ProviderKind::OpenAi,
                        model: "m".into(),
                        target_model: None,
                        aliases: vec![],
                        topics: vec![],
                        fallbacks: vec![],
                        fallback_on: crate::config::Triggers::all(),
                        first_byte_timeout: None,
                        deadline: None,
                        span_attributes: Default::default(),
                        answer_headers: Default::default(),
                    }],
                    fallback: None,
                    threshold: Some(0.5),
                    deny_topics: vec![],
                    routing_text: RoutingText::LastUser,
                    span_attributes: Default::default(),
                };
                (format!("p{i}"), Arc::new(proxy))
            })
            .collect();
        let tenant = Tenant {
            id: "t".into(),
            keys: vec![],
            providers: vec![provider].into(),
            proxies,
            governance: Default::default(),
        };
        Arc::new(Snapshot {
            tenants: BTreeMap::from([("t".into(), Arc::new(tenant))]),
        })
    }

    #[actix_web::test]
    async fn refuses_snapshots_over_the_cap_and_keeps_serving_the_old_one() {
        let directory = DirectoryHandle::default();
        let sup = Supervisor::with_cap(directory.clone(), 2).start();
        assert_eq!(sup.send(ApplySnapshot(snapshot(2))).await.ok(), Some(Ok(2)));
        let refused = sup.send(ApplySnapshot(snapshot(3))).await.expect("mailbox");
        assert!(refused.is_err_and(|e| e.contains("at most 2")));
        let dir = directory.current();
        assert_eq!(
            dir.tenants["t"].proxies.len(),
            2,
            "the old set keeps serving"
        );
        let decision = dir.tenants["t"].proxies["p0"]
            .addr
            .send(Decide {
                model: Some("m".into()),
                text: None,
            })
            .await;
        assert!(matches!(decision, Ok(Ok(_))));
    }

    #[actix_web::test]
    async fn the_fifty_first_proxy_is_refused_at_run_time() {
        let directory = DirectoryHandle::default();
        let sup = Supervisor::with_cap(directory.clone(), 500).start();
        let refused = sup
            .send(ApplySnapshot(snapshot(MAX_PROXIES + 1)))
            .await
            .expect("mailbox");
        assert!(refused.is_err_and(|e| e.contains("51 proxies") && e.contains("at most 50")));
        assert!(directory.current().tenants.is_empty());
        let applied = sup
            .send(ApplySnapshot(snapshot(MAX_PROXIES)))
            .await
            .expect("mailbox");
        assert_eq!(applied, Ok(MAX_PROXIES));
    }

    #[actix_web::test]
    async fn reload_keeps_live_actors_and_drops_removed_ones() {
        let directory = DirectoryHandle::default();
        let sup = Supervisor::new(directory.clone()).start();
        assert_eq!(sup.send(ApplySnapshot(snapshot(3))).await.ok(), Some(Ok(3)));
        let before = directory.current().tenants["t"].proxies["p0"].addr.clone();
        assert_eq!(sup.send(ApplySnapshot(snapshot(1))).await.ok(), Some(Ok(1)));
        let dir = directory.current();
        assert_eq!(dir.tenants["t"].proxies.len(), 1);
        assert_eq!(
            dir.tenants["t"].proxies["p0"].addr, before,
            "same actor, updated in place"
        );
    }

    #[actix_web::test]
    async fn a_panicking_proxy_actor_is_restarted_and_the_others_never_notice() {
        let directory = DirectoryHandle::default();
        let sup = Supervisor::new(directory.clone()).start();
        assert_eq!(sup.send(ApplySnapshot(snapshot(2))).await.ok(), Some(Ok(2)));
        let decide = || Decide {
            model: Some("m".into()),
            text: None,
        };
        let dir = directory.current();
        let (p0, p1) = (
            dir.tenants["t"].proxies["p0"].addr.clone(),
            dir.tenants["t"].proxies["p1"].addr.clone(),
        );
        // The message in hand gets no answer (the data plane turns that into a 503 and
        // reports the proxy to the supervisor)…
        assert!(p0.send(super::super::proxy::Crash).await.is_err());
        // The dead actor's mailbox closes as its context is torn down, just after the panic.
        for _ in 0..200 {
            if !p0.connected() {
                break;
            }
            actix_web::rt::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!p0.connected(), "the panic stopped p0");
        assert!(p0.send(decide()).await.is_err());
        // …the other proxy never noticed…
        assert!(matches!(p1.send(decide()).await, Ok(Ok(_))));
        // …and once reported, p0 is a new actor, published in the directory, answering.
        sup.send(RestartProxy {
            tenant: "t".into(),
            proxy: "p0".into(),
        })
        .await
        .expect("supervisor mailbox");
        let restarted = directory.current().tenants["t"].proxies["p0"].addr.clone();
        assert!(restarted != p0, "a new actor");
        assert!(matches!(restarted.send(decide()).await, Ok(Ok(_))));
        assert_eq!(
            directory.current().tenants["t"].proxies["p1"].addr,
            p1,
            "p1 was left alone"
        );
    }
}
