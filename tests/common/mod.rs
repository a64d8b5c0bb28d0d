//! Test harness: the real `switchyard` binary, started on random loopback ports.
//!
//! [`Emulator`] runs `switchyard emulate`; [`Gateway`] writes tenant files to a temporary
//! directory and runs `switchyard serve` on them. Both are killed on drop.
#![allow(dead_code)]

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

/// Spawns the binary and waits for `<prefix>http://ADDR` on stdout.
fn spawn(mut cmd: Command, prefix: &'static str) -> Running {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env("RUST_LOG", "warn");
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
        // Semantic proxies embed with the real weights (scripts/test fetches them) and cache
        // utterance vectors in this test's own directory.
        cmd.env(
            "SWITCHYARD_EMBEDDING_MODEL_DIR",
            switchyard::embedding::test_model_dir(),
        );
        cmd.env("SWITCHYARD_CACHE_DIR", dir.path().join("cache"));
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
    Gateway::start(
        &[("a", tenant)],
        &[
            ("A_OPENAI_KEY", provider_key.into()),
            ("A_OPENAI_BASE_URL", format!("{}/v1", emulator.base)),
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
