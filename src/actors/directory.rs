//! The directory: tenants and their proxies, as request handlers see them.
//!
//! The supervisor builds a new [`Directory`] for every change and swaps it in whole; a handler
//! takes the current one (an `Arc` clone under a read lock held for nanoseconds) and keeps it
//! for the whole request, so a reload never changes a request midway. Each proxy is published
//! with its actor's address and the immutable route table the actor owns, so a decision that is
//! a pure lookup (model-based routing) needs no mailbox hop.

use super::proxy::ProxyActor;
use crate::config::{Provider, Proxy, Tenant};
use crate::fxhash::FxHashMap;
use actix::Addr;
use std::sync::{Arc, RwLock};

/// One proxy as published: its actor and the route table that actor owns.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    pub addr: Addr<ProxyActor>,
    pub routes: Arc<Proxy>,
    pub providers: Arc<[Arc<Provider>]>,
}

/// One tenant: its keys and providers, and its proxies.
#[derive(Debug)]
pub struct TenantEntry {
    pub tenant: Arc<Tenant>,
    pub proxies: FxHashMap<String, ProxyHandle>,
}

/// Every tenant the gateway serves at one moment.
#[derive(Debug, Default)]
pub struct Directory {
    pub tenants: FxHashMap<String, TenantEntry>,
}

/// The shared, swappable current directory.
#[derive(Clone, Debug, Default)]
pub struct DirectoryHandle(Arc<RwLock<Arc<Directory>>>);

impl DirectoryHandle {
    /// The directory in force now.
    pub fn current(&self) -> Arc<Directory> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) fn replace(&self, next: Directory) {
        let next = Arc::new(next);
        match self.0.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }
}
