//! Configuration: tenant files in, one immutable [`Snapshot`] out.
//!
//! Three stages, each its own file: `raw` parses TOML with unknown keys rejected (all of them
//! reported, not just the first), `validate`
//! checks every rule without side effects and reports all violations at once, and `snapshot`
//! resolves secrets from the environment into the runtime types. Watching files and swapping
//! snapshots belong to the supervisor; `watcher` only reads the files again and hands it the result.

pub mod raw;
pub mod secret;
pub mod snapshot;
pub mod types;
pub mod validate;
pub mod watcher;

pub use secret::Secret;
pub use snapshot::{Overrides, Snapshot, Tenant};
pub use types::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// One configuration problem: where, which field, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The tenant file, or `None` for gateway-wide rules.
    pub file: Option<PathBuf>,
    /// Dotted field path, e.g. `proxies.support.routes[1].provider`.
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(file: &Path, path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            file: Some(file.to_path_buf()),
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn gateway(reason: impl Into<String>) -> Self {
        Self {
            file: None,
            path: "(gateway)".into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}: {}: {}", file.display(), self.path, self.reason),
            None => write!(f, "{}: {}", self.path, self.reason),
        }
    }
}

/// Reads and parses every `*.toml` in `dir` (sorted by name), then validates the set.
///
/// Everything named `*.toml` is meant as a tenant, so what cannot be one is reported, never
/// skipped: a directory, a special file, a dangling symlink, and a symlink that resolves
/// outside `dir` (tenant files are the gateway's trust boundary; a link out of the directory
/// would let any file the process can read define a tenant and its keys). A symlink that stays
/// inside `dir` is followed: Kubernetes mounts a ConfigMap exactly that way
/// (`acme.toml -> ..data/acme.toml`). Hidden names (`.#acme.toml`) are skipped. An empty directory is not an error here: the callers
/// decide (see `run`).
pub fn load_dir(dir: &Path) -> Result<Vec<TenantSpec>, Vec<ConfigError>> {
    let directory_error = |what: &str, err: std::io::Error| {
        vec![ConfigError::new(
            dir,
            "(directory)",
            format!("cannot {what} tenants directory: {err}"),
        )]
    };
    let entries = std::fs::read_dir(dir).map_err(|err| directory_error("read", err))?;
    let root = dir
        .canonicalize()
        .map_err(|err| directory_error("resolve", err))?;
    let mut candidates = Vec::new();
    for entry in entries {
        let path = entry.map_err(|err| directory_error("list", err))?.path();
        // Hidden names are never tenants (a tenant id starts with a letter or digit): they
        // are editors' lock and swap files (`.#acme.toml`, a dangling link while Emacs edits)
        // and Kubernetes' `..data` plumbing, and must not fail a load or a reload.
        let hidden = path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
        if !hidden && path.extension().is_some_and(|x| x == "toml") {
            candidates.push(path);
        }
    }
    candidates.sort();

    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    let mut set_aside = Vec::new();
    for path in candidates {
        if let Err(reason) = check_tenant_file(&root, &path) {
            errors.push(ConfigError::new(&path, "(file)", reason));
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut found = raw::parse(&text);
                errors.extend(
                    found
                        .errors
                        .iter()
                        .map(|(field, reason)| ConfigError::new(&path, field, reason)),
                );
                if let Some(tenant) = found.tenant.take() {
                    parsed.push((path.clone(), tenant));
                }
                set_aside.push((path, found));
            }
            Err(err) => errors.push(ConfigError::new(
                &path,
                "(file)",
                format!("cannot read: {err}"),
            )),
        }
    }
    // Validate what parsed even when another file (or part of this one) did not, so one run
    // reports everything; drop the rule violations that only repeat a reported parse error.
    let repeats = |e: &ConfigError| {
        set_aside
            .iter()
            .any(|(path, p)| e.file.as_deref() == Some(path.as_path()) && p.is_consequence(&e.path))
    };
    match validate::validate(parsed) {
        Ok(specs) if errors.is_empty() => Ok(specs),
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more.into_iter().filter(|e| !repeats(e)));
            Err(errors)
        }
    }
}

/// Why `path` (named `*.toml` inside the tenants directory `root`, canonical) cannot be read
/// as a tenant file, if it cannot.
fn check_tenant_file(root: &Path, path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|err| format!("cannot read: {err}"))?;
    if meta.file_type().is_symlink() {
        let target = path
            .canonicalize()
            .map_err(|err| format!("is a symbolic link whose target cannot be resolved: {err}"))?;
        if !target.starts_with(root) {
            return Err(format!(
                "is a symbolic link to {}, outside the tenants directory; refusing to follow it (copy the file into the directory instead)",
                target.display()
            ));
        }
    }
    let meta = std::fs::metadata(path).map_err(|err| format!("cannot read: {err}"))?;
    if meta.is_dir() {
        Err("is a directory, not a tenant file (only files named <tenant>.toml belong here)".into())
    } else if !meta.is_file() {
        Err("is not a regular file".into())
    } else {
        Ok(())
    }
}
