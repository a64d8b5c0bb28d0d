//! Hot reload: read the tenants directory again and swap the whole configuration, or keep the
//! old one.
//!
//! [`Reloader::reload`] is the one path for every trigger (the file watcher and
//! `POST /admin/reload`): load and validate every file, resolve secrets, and hand the snapshot
//! to the supervisor, which swaps it in whole (actors of removed proxies stop, new ones start,
//! unchanged ones keep their state). An invalid set changes nothing: every error is logged with
//! its file and field, counted, and returned. Reloads run one at a time, so a slow read can
//! never overwrite a newer one. Requests in flight keep the directory they started with.
//! [`watch`] runs the debounced file watcher.

use super::{ConfigError, Overrides, load_dir, snapshot};
use crate::actors::messages::ApplySnapshot;
use crate::actors::supervisor::Supervisor;
use crate::telemetry::metrics::metrics;
use actix::Addr;
use notify::event::{Event, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// What started a reload (for the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Watcher,
    Admin,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Watcher => "file change",
            Self::Admin => "admin request",
        }
    }
}

/// Why a reload changed nothing.
#[derive(Debug)]
pub enum ReloadError {
    /// The files are invalid (or name unset secrets): every problem.
    Invalid(Vec<ConfigError>),
    /// Valid files the supervisor would not run (the proxy cap), or the supervisor is gone.
    Refused(String),
}

/// The configuration in force and the last attempt.
#[derive(Clone, Debug)]
pub struct ReloadStatus {
    /// 1 for the configuration loaded at start, +1 per applied reload.
    pub generation: u64,
    /// Unix seconds when it was applied.
    pub applied_at: u64,
    pub tenants: usize,
    pub proxies: usize,
    /// The last rejected attempt since the last applied one: when, and its errors.
    pub last_rejected: Option<(u64, Vec<String>)>,
}

/// Reloads the tenants directory into the supervisor.
pub struct Reloader {
    dir: PathBuf,
    overrides: Overrides,
    supervisor: Addr<Supervisor>,
    /// One reload at a time.
    running: tokio::sync::Mutex<()>,
    status: Mutex<ReloadStatus>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Reloader {
    /// A reloader for `dir`, whose first configuration (generation 1) is already applied.
    pub fn new(
        dir: PathBuf,
        overrides: Overrides,
        supervisor: Addr<Supervisor>,
        tenants: usize,
        proxies: usize,
    ) -> Self {
        let status = ReloadStatus {
            generation: 1,
            applied_at: now_secs(),
            tenants,
            proxies,
            last_rejected: None,
        };
        metrics().config_applied(status.generation, status.applied_at);
        Self {
            dir,
            overrides,
            supervisor,
            running: tokio::sync::Mutex::new(()),
            status: Mutex::new(status),
        }
    }

    /// The configuration in force.
    pub fn status(&self) -> ReloadStatus {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut ReloadStatus)) -> ReloadStatus {
        let mut guard = match self.status.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard);
        guard.clone()
    }

    /// Reads, validates and applies the tenants directory; on any error the configuration in
    /// force stays. Returns the new status.
    pub async fn reload(&self, trigger: Trigger) -> Result<ReloadStatus, ReloadError> {
        let _one_at_a_time = self.running.lock().await;
        let dir = self.dir.clone();
        let overrides = self.overrides.clone();
        // File reads and hashing are blocking: off the worker thread.
        let built = actix_web::rt::task::spawn_blocking(move || {
            let specs = load_dir(&dir)?;
            snapshot::build(specs, &|var| std::env::var(var).ok(), &overrides)
        })
        .await
        .map_err(|err| ReloadError::Refused(format!("the reload task failed: {err}")))
        .and_then(|r| r.map_err(ReloadError::Invalid));
        let snapshot = match built {
            Ok(s) => Arc::new(s),
            Err(err) => return Err(self.rejected(trigger, err)),
        };
        let (tenants, proxies) = (snapshot.tenants.len(), snapshot.proxy_count());
        match self.supervisor.send(ApplySnapshot(snapshot)).await {
            Ok(Ok(_)) => {}
            Ok(Err(reason)) => return Err(self.rejected(trigger, ReloadError::Refused(reason))),
            Err(err) => {
                let why = format!("the supervisor is unavailable: {err}");
                return Err(self.rejected(trigger, ReloadError::Refused(why)));
            }
        }
        let status = self.update(|s| {
            s.generation += 1;
            s.applied_at = now_secs();
            s.tenants = tenants;
            s.proxies = proxies;
            s.last_rejected = None;
        });
        metrics().reload("applied");
        metrics().config_applied(status.generation, status.applied_at);
        tracing::info!(
            trigger = trigger.as_str(),
            generation = status.generation,
            tenants,
            proxies,
            "configuration reloaded"
        );
        Ok(status)
    }

    /// Logs, counts and remembers a rejected reload; hands the error back.
    fn rejected(&self, trigger: Trigger, err: ReloadError) -> ReloadError {
        let messages: Vec<String> = match &err {
            ReloadError::Invalid(errors) => {
                for e in errors {
                    let file = e
                        .file
                        .as_ref()
                        .map(|f| f.display().to_string())
                        .unwrap_or_default();
                    tracing::error!(file = %file, field = %e.path, reason = %e.reason, "invalid tenant configuration");
                }
                errors.iter().map(ToString::to_string).collect()
            }
            ReloadError::Refused(reason) => {
                tracing::error!(%reason, "configuration refused");
                vec![reason.clone()]
            }
        };
        metrics().reload(match err {
            ReloadError::Invalid(_) => "invalid",
            ReloadError::Refused(_) => "refused",
        });
        let status = self.update(|s| s.last_rejected = Some((now_secs(), messages.clone())));
        tracing::warn!(
            trigger = trigger.as_str(),
            errors = messages.len(),
            generation = status.generation,
            "reload rejected; the configuration in force keeps serving"
        );
        err
    }
}

/// Watches the tenants directory and reloads `debounce` after the last change of a burst (an
/// editor's save, a `kubectl apply` swapping a ConfigMap's links). The returned watcher stops
/// when dropped. Any change in the directory counts: Kubernetes changes only hidden links, and
/// a reload of an unchanged set is harmless (live actors keep their state).
///
/// The debounce is done here rather than with `notify-debouncer-mini`, which drops event kinds:
/// the reload's own reads of the files (inotify's open and close events) would then trigger the
/// next reload, forever. Only creations, modifications and removals count.
pub fn watch(
    reloader: Arc<Reloader>,
    dir: &std::path::Path,
    debounce: Duration,
) -> Result<RecommendedWatcher, String> {
    // Capacity one: a burst during a reload queues one more reload, not one per event.
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| match res {
        Ok(event) => {
            if matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
            ) {
                let _ = tx.try_send(());
            }
        }
        Err(err) => tracing::warn!(error = %err, "watching the tenants directory failed"),
    })
    .map_err(|err| format!("cannot watch {}: {err}", dir.display()))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|err| format!("cannot watch {}: {err}", dir.display()))?;
    actix_web::rt::spawn(async move {
        while rx.recv().await.is_some() {
            // Quiet for `debounce` since the last change: a burst is one reload.
            loop {
                match actix_web::rt::time::timeout(debounce, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            // Errors are logged and counted inside.
            let _ = reloader.reload(Trigger::Watcher).await;
        }
    });
    Ok(watcher)
}
