//! Test harness: the real `switchyard` binary, started on random loopback ports.
//!
//! [`Emulator`] runs `switchyard emulate`; [`Gateway`] writes tenant files to a temporary
//! directory and runs `switchyard serve` on them. Both are killed on drop.
#![allow(dead_code)]

pub mod http;
pub mod redis;
pub mod stub;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const EMULATOR_KEY: &str = "sk-emulator-openai";
/// `sk-acme-demo` and its SHA-256, as in tenants/acme.toml.
pub const KEY_A: &str = "sk-acme-demo";
pub const KEY_A_SHA: &str = "953d0ab8229abd463060e52204c8cb44e32297002500258c1181e18379c54626";
/// `sk-globex-demo` and its SHA-256.
pub const KEY_B: &str = "sk-globex-demo";
pub const KEY_B_SHA: &str = "6d206010417442c2e42a4f7152b74f8c830923856c0aa2514d0467ed6b0ec9b1";

/// A child process that is killed when dropped.
pub struct Running {
    child: Child,
    pub base: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// The child's process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `TERM`) to the child.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits up to `limit` for the child to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Spawns the binary and waits for `<prefix>http://ADDR` on stdout.
fn spawn(mut cmd: Command, prefix: &'static str) -> Running {
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn switchyard");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut found = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !found && let Some(addr) = line.strip_prefix(prefix) {
                found = true;
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(base) => Running { child, base },
        Err(_) => {
            let _ = child.kill();
            let status = child.wait().ok();
            panic!("switchyard did not print `{prefix}…` in time (exit: {status:?})");
        }
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
}

/// `switchyard emulate` on a random port.
pub fn emulator() -> Running {
    let mut cmd = bin();
    cmd.env("RUST_LOG", "warn");
    cmd.args(["emulate", "--listen", "127.0.0.1:0", "--workers", "1"]);
    spawn(cmd, "emulator listening on ")
}

/// A gateway serving `tenants` (file stem, TOML) with `env` set.
pub struct Gateway {
    pub run: Running,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn start(tenants: &[(&str, String)], env: &[(&str, String)], extra: &[&str]) -> Gateway {
        Self::start_logging(tenants, env, extra, None)
    }

    /// As [`Gateway::start`]; with `log`, at level info into that file instead of warn to the
    /// test's stderr.
    pub fn start_logging(
        tenants: &[(&str, String)],
        env: &[(&str, String)],
        extra: &[&str],
        log: Option<&std::path::Path>,
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        for (id, text) in tenants {
            std::fs::write(dir.path().join(format!("{id}.toml")), text).expect("write tenant");
        }
        let mut cmd = bin();
        cmd.arg("serve").arg("--tenants").arg(dir.path()).args([
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
        ]);
        cmd.args(extra);
        match log {
            Some(path) => {
                let file = std::fs::File::create(path).expect("log file");
                cmd.env("RUST_LOG", "info").stderr(Stdio::from(file));
            }
            None => {
                cmd.env("RUST_LOG", "warn");
            }
        }
        // Semantic proxies embed with the real weights (scripts/test fetches them) and cache
        // utterance vectors in this test's own directory.
        cmd.env(
            "SWITCHYARD_EMBEDDING_MODEL_DIR",
            switchyard::embedding::test_model_dir(),
        );
        cmd.env("SWITCHYARD_CACHE_DIR", dir.path().join("cache"));
        // Each gateway keeps its usage ledger in its own directory (a test may pass --ledger),
        // below the tenants directory, which is watched without its subdirectories.
        let ledger = dir.path().join("ledger");
        std::fs::create_dir_all(&ledger).expect("ledger dir");
        cmd.env(
            "SWITCHYARD_LEDGER",
            format!("sqlite://{}", ledger.join("ledger.db").display()),
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        Gateway {
            run: spawn(cmd, "switchyard listening on "),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.run.base)
    }

    /// The `/metrics` page, checked to be a 200 in the Prometheus text format.
    pub async fn metrics(&self) -> String {
        let r = http::send(http::client().get(self.url("/metrics")), None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("content-type"),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        r.text()
    }

    /// The directory the tenant files are in (to change them under a running gateway).
    pub fn tenants_dir(&self) -> &std::path::Path {
        self._dir.path()
    }
}

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Tenant "a": proxy `chat` (routes `big` gpt-4o pinned to gpt-4o-2024-08-06 with alias
/// `smart`, `mini` gpt-4o-mini, fallback `mini`) and proxy `strict` (one route, no fallback).
pub fn tenant_a(base_url_env: &str) -> String {
    format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_A_SHA}"

[providers.openai]
type = "openai"
api_key_env = "A_OPENAI_KEY"
base_url = "http://127.0.0.1:1/v1"
base_url_env = "{base_url_env}"
max_retries = 2

[proxies.chat]
fallback = "mini"
[[proxies.chat.routes]]
name = "big"
provider = "openai"
model = "gpt-4o"
target_model = "gpt-4o-2024-08-06"
aliases = ["smart"]
[[proxies.chat.routes]]
name = "mini"
provider = "openai"
model = "gpt-4o-mini"

[proxies.strict]
[[proxies.strict.routes]]
name = "only"
provider = "openai"
model = "gpt-4.1"
"#
    )
}

/// Tenant "b": one proxy, its own key.
pub fn tenant_b() -> String {
    format!(
        r#"
[[api_keys]]
name = "demo"
sha256 = "{KEY_B_SHA}"

[providers.openai]
type = "openai"
api_key_env = "A_OPENAI_KEY"
base_url_env = "A_OPENAI_BASE_URL"

[proxies.chat]
[[proxies.chat.routes]]
name = "only"
provider = "openai"
model = "gpt-4o"
"#
    )
}

/// A gateway serving tenant `a` as given, with `provider_key` for its provider, in front of
/// `emulator`.
pub fn gateway_with(emulator: &Running, tenant: String, provider_key: &str) -> Gateway {
    gateway_at(&format!("{}/v1", emulator.base), tenant, provider_key)
}

/// A gateway serving tenant `a` as given, its provider at `base_url` (e.g. a [`stub`]).
pub fn gateway_at(base_url: &str, tenant: String, provider_key: &str) -> Gateway {
    Gateway::start(
        &[("a", tenant)],
        &[
            ("A_OPENAI_KEY", provider_key.into()),
            ("A_OPENAI_BASE_URL", base_url.to_owned()),
        ],
        &[],
    )
}

/// A gateway with tenants a and b in front of `emulator`.
pub fn gateway_for(emulator: &Running, extra: &[&str]) -> Gateway {
    Gateway::start(
        &[("a", tenant_a("A_OPENAI_BASE_URL")), ("b", tenant_b())],
        &[
            ("A_OPENAI_KEY", EMULATOR_KEY.into()),
            ("A_OPENAI_BASE_URL", format!("{}/v1", emulator.base)),
        ],
        extra,
    )
}
