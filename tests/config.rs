//! Configuration: fixture files that must load, invalid ones that must fail with their named
//! errors (all at once), the gateway-wide proxy cap, secrets from the environment, and the
//! `switchyard validate` verb.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use switchyard::config::{self, ConfigError, Overrides, snapshot};

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tenants")
        .join(kind);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// Loads one file alone, as `<stem>.toml` in a fresh directory.
fn load_alone(file: &Path) -> Result<Vec<config::TenantSpec>, Vec<ConfigError>> {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::copy(file, dir.path().join(file.file_name().expect("name"))).expect("copy");
    config::load_dir(dir.path())
}

#[test]
fn valid_fixtures_and_example_tenants_load() {
    for file in fixtures("valid") {
        if let Err(errors) = load_alone(&file) {
            panic!("{} should be valid: {errors:#?}", file.display());
        }
    }
    let specs = config::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tenants"))
        .expect("example tenants");
    assert!(specs.len() >= 2, "ship at least two example tenants");
    assert!(specs.iter().map(|t| t.proxies.len()).sum::<usize>() >= 4);
}

/// Each invalid fixture lists `# expect: <field path> :: <reason fragment>` lines; the file
/// must fail with exactly those errors, every one reported in the same run.
#[test]
fn invalid_fixtures_fail_with_every_named_error() {
    for file in fixtures("invalid") {
        let text = fs::read_to_string(&file).expect("read");
        let expected: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .map(|l| {
                let (path, reason) = l.split_once(" :: ").expect("`path :: reason`");
                (path.to_owned(), reason.to_owned())
            })
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` lines",
            file.display()
        );
        let errors = match load_alone(&file) {
            Ok(_) => panic!("{} should be invalid", file.display()),
            Err(errors) => errors,
        };
        for (path, reason) in &expected {
            assert!(
                errors
                    .iter()
                    .any(|e| &e.path == path && e.reason.contains(reason.as_str())),
                "{}: no error `{path}: …{reason}…` among {errors:#?}",
                file.display()
            );
        }
        assert_eq!(
            errors.len(),
            expected.len(),
            "{}: unexpected extra errors {errors:#?}",
            file.display()
        );
        for e in &errors {
            let shown = e.to_string();
            assert!(
                shown.contains(&*file.file_name().expect("name").to_string_lossy()),
                "{shown}"
            );
            assert!(
                !shown.contains("sk-live-do-not-commit") && !shown.contains("sk-upstream-secret"),
                "secret leaked: {shown}"
            );
        }
    }
}

/// A tenant with `n` proxies; `key` makes its key hash its own (keys are unique across
/// tenants).
fn tenant_with_proxies(n: usize, key: u8) -> String {
    let mut s = format!(
        "[[api_keys]]\nname = \"k\"\nsha256 = \"{key:064x}\"\n\n[providers.openai]\ntype = \"openai\"\napi_key_env = \"K\"\n\n"
    );
    for i in 0..n {
        s += &format!(
            "[proxies.p{i}]\n[[proxies.p{i}.routes]]\nname = \"r\"\nprovider = \"openai\"\nmodel = \"m\"\n\n"
        );
    }
    s
}

#[test]
fn the_gateway_serves_at_most_fifty_proxies_across_tenants() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("a.toml"), tenant_with_proxies(30, 1)).expect("write");
    fs::write(dir.path().join("b.toml"), tenant_with_proxies(20, 2)).expect("write");
    assert_eq!(
        config::load_dir(dir.path()).expect("50 is allowed").len(),
        2
    );

    fs::write(dir.path().join("c.toml"), tenant_with_proxies(1, 3)).expect("write");
    let errors = config::load_dir(dir.path()).expect_err("51 is not");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].reason.contains("51 proxies") && errors[0].reason.contains("at most 50"),
        "{}",
        errors[0]
    );
}

#[test]
fn secrets_come_from_the_environment_and_missing_ones_are_all_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("t.toml"),
        "[[api_keys]]\nname = \"k\"\nenv = \"T_KEY\"\n\n[providers.openai]\ntype = \"openai\"\napi_key_env = \"T_UPSTREAM\"\nbase_url_env = \"T_BASE\"\n\n[proxies.p]\n[[proxies.p.routes]]\nname = \"r\"\nprovider = \"openai\"\nmodel = \"m\"\n",
    )
    .expect("write");
    let specs = config::load_dir(dir.path()).expect("valid");

    let errors =
        snapshot::build(specs.clone(), &|_| None, &Overrides::default()).expect_err("nothing set");
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["api_keys[0].env", "providers.openai.api_key_env"]);

    let env: HashMap<&str, &str> = [
        ("T_KEY", "client-key"),
        ("T_UPSTREAM", "sk-up"),
        ("T_BASE", "http://127.0.0.1:9/v1/"),
    ]
    .into();
    let snap = snapshot::build(
        specs,
        &|k| env.get(k).map(|v| v.to_string()),
        &Overrides::default(),
    )
    .expect("resolved");
    let tenant = &snap.tenants["t"];
    let provider = &tenant.providers[0];
    assert_eq!(
        provider.base_url, "http://127.0.0.1:9/v1",
        "override applied, trailing slash dropped"
    );
    assert!(
        matches!(&provider.credentials, config::Credentials::ApiKey(k) if k.expose() == "sk-up"),
        "the key read from its variable"
    );
    assert!(
        !format!("{provider:?}").contains("sk-up"),
        "Debug must redact the key"
    );
    use sha2::Digest;
    let digest: [u8; 32] = sha2::Sha256::digest(b"client-key").into();
    assert_eq!(tenant.keys[0].digest, digest);
}

#[test]
fn validate_verb_exits_nonzero_with_file_field_and_reason() {
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let ok = Command::new(bin)
        .args(["validate", "tenants"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let bad =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tenants/invalid/references.toml");
    fs::copy(&bad, dir.path().join("references.toml")).expect("copy");
    let out = Command::new(bin)
        .arg("validate")
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("references.toml: proxies.chat.routes[0].provider: unknown provider"),
        "{stderr}"
    );
    assert!(stderr.contains("6 configuration errors"), "{stderr}");
}

/// A minimal valid tenant whose key line is `key` (e.g. `sha256 = "…"` or `env = "VAR"`).
fn tenant_with_key(key: &str) -> String {
    format!(
        "[[api_keys]]\nname = \"k\"\n{key}\n\n[providers.openai]\ntype = \"openai\"\napi_key_env = \"K\"\n\n[proxies.p]\n[[proxies.p.routes]]\nname = \"r\"\nprovider = \"openai\"\nmodel = \"m\"\n"
    )
}

fn shown(errors: &[ConfigError], dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    errors
        .iter()
        .map(|e| e.to_string().replace(&prefix, ""))
        .collect()
}

#[test]
fn a_key_shared_by_two_tenants_is_refused_naming_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The same digest, once in capitals: keys compare by value, not spelling.
    let sha = "953d0ab8229abd463060e52204c8cb44e32297002500258c1181e18379c54626";
    fs::write(
        dir.path().join("a.toml"),
        tenant_with_key(&format!("sha256 = \"{sha}\"")),
    )
    .expect("write");
    fs::write(
        dir.path().join("b.toml"),
        tenant_with_key(&format!("sha256 = \"{}\"", sha.to_uppercase())),
    )
    .expect("write");
    fs::write(
        dir.path().join("c.toml"),
        tenant_with_key("env = \"SHARED\""),
    )
    .expect("write");
    fs::write(
        dir.path().join("d.toml"),
        tenant_with_key("env = \"SHARED\""),
    )
    .expect("write");
    let errors = config::load_dir(dir.path()).expect_err("shared keys");
    assert_eq!(
        shown(&errors, dir.path()),
        [
            "b.toml: api_keys[0].sha256: the same key as api_keys[0] (\"k\") of tenant \"a\" (a.toml); a key must belong to one tenant, or it authenticates on both",
            "d.toml: api_keys[0].env: the same environment variable as api_keys[0] (\"k\") of tenant \"c\" (c.toml); a key must belong to one tenant, or it authenticates on both",
        ]
    );

    // Two variables holding the same value are only visible once the environment is read.
    fs::remove_file(dir.path().join("b.toml")).expect("rm");
    fs::write(
        dir.path().join("d.toml"),
        tenant_with_key("env = \"OTHER\""),
    )
    .expect("write");
    let specs = config::load_dir(dir.path()).expect("valid now");
    let env: HashMap<&str, &str> = [("SHARED", "same"), ("OTHER", "same"), ("K", "sk")].into();
    let errors = snapshot::build(
        specs.clone(),
        &|k| env.get(k).map(|v| v.to_string()),
        &Overrides::default(),
    )
    .expect_err("same value");
    assert_eq!(
        shown(&errors, dir.path()),
        [
            "d.toml: api_keys[0].env: the value of OTHER is the same key as api_keys[0] (\"k\") of tenant \"c\" (c.toml); a key must belong to one tenant, or it authenticates on both"
        ]
    );
    let env: HashMap<&str, &str> = [("SHARED", "one"), ("OTHER", "two"), ("K", "sk")].into();
    let snap = snapshot::build(
        specs,
        &|k| env.get(k).map(|v| v.to_string()),
        &Overrides::default(),
    )
    .expect("distinct values");
    assert_eq!(snap.tenants.len(), 3);
}

#[test]
fn a_set_but_empty_variable_is_not_called_unset() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("t.toml"),
        tenant_with_key("env = \"T_KEY\""),
    )
    .expect("write");
    let specs = config::load_dir(dir.path()).expect("valid");
    let errors =
        snapshot::build(specs, &|_| Some(String::new()), &Overrides::default()).expect_err("empty");
    assert_eq!(
        shown(&errors, dir.path()),
        [
            "t.toml: api_keys[0].env: environment variable T_KEY is set but empty",
            "t.toml: providers.openai.api_key_env: environment variable K is set but empty",
        ]
    );
}

#[cfg(unix)]
#[test]
fn what_cannot_be_a_tenant_file_is_reported_not_skipped_or_followed() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::write(
        root.join("good.toml"),
        tenant_with_key(&format!("sha256 = \"{:064x}\"", 1)),
    )
    .expect("write");
    // A link that stays inside the directory is followed (the ConfigMap layout).
    fs::create_dir(root.join("..data")).expect("mkdir");
    fs::write(
        root.join("..data/linked.toml"),
        tenant_with_key(&format!("sha256 = \"{:064x}\"", 2)),
    )
    .expect("write");
    symlink("..data/linked.toml", root.join("linked.toml")).expect("symlink");
    let specs = config::load_dir(root).expect("inside links are fine");
    let ids: Vec<&str> = specs.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["good", "linked"]);

    fs::create_dir(root.join("folder.toml")).expect("mkdir");
    let secret = outside.path().join("elsewhere.toml");
    fs::write(
        &secret,
        tenant_with_key(&format!("sha256 = \"{:064x}\"", 3)),
    )
    .expect("write");
    symlink(&secret, root.join("escape.toml")).expect("symlink");
    symlink("../nowhere.toml", root.join("dangling.toml")).expect("symlink");
    // An editor's lock file (a dangling link) is hidden: skipped, not an error.
    symlink("user@host.1234", root.join(".#linked.toml")).expect("symlink");
    let errors = config::load_dir(root).expect_err("three bad entries");
    let target = secret.canonicalize().expect("canonical");
    assert_eq!(
        shown(&errors, root),
        [
            "dangling.toml: (file): is a symbolic link whose target cannot be resolved: No such file or directory (os error 2)".to_owned(),
            format!(
                "escape.toml: (file): is a symbolic link to {}, outside the tenants directory; refusing to follow it (copy the file into the directory instead)",
                target.display()
            ),
            "folder.toml: (file): is a directory, not a tenant file (only files named <tenant>.toml belong here)".to_owned(),
        ]
    );
}

#[test]
fn an_empty_tenants_directory_fails_validate_and_serve_warns() {
    use std::io::{BufRead, BufReader, Read, Write};
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("README.md"), "not a tenant").expect("write");

    let out = Command::new(bin)
        .arg("validate")
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: no tenant files found in {} (expected one <tenant>.toml per tenant)\n",
            dir.path().display()
        )
    );

    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--tenants")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--workers", "1"])
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read");
    let addr = line
        .trim()
        .strip_prefix("switchyard listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    // It serves, and refuses what it cannot serve.
    let mut conn = std::net::TcpStream::connect(&addr).expect("connect");
    write!(
        conn,
        "POST /acme/chat/v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer sk-x\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    )
    .expect("send");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 401 "), "{reply}");
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].ends_with(&format!(
            "no tenant files found in {} (expected one <tenant>.toml per tenant): the gateway starts but serves nothing: every request is refused with 401 until tenants are loaded",
            dir.path().display()
        )),
        "{stderr}"
    );
}

/// Each provider type becomes its own settings and credentials, with its defaults.
#[test]
fn each_provider_type_validates_into_its_own_settings_and_credentials() {
    use config::{AzureApi, CredentialSource, ProviderSettings};
    let head = "[[api_keys]]\nname = \"k\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000001\"\n\n";
    let served = format!(
        "{head}[providers.oa]\ntype = \"openai\"\napi_key_env = \"OA\"\norganization = \"org-1\"\n\n\
         [providers.classic]\ntype = \"azure_openai\"\nendpoint = \"https://r.openai.azure.com/\"\napi_version = \"2024-10-21\"\napi_key_env = \"AZ\"\n\n\
         [providers.v1]\ntype = \"azure_openai\"\nbase_url = \"https://r.openai.azure.com/openai/v1\"\nbearer_token_env = \"AZ_TOKEN\"\n\n\
         [proxies.p]\n[[proxies.p.routes]]\nname = \"r\"\nprovider = \"classic\"\nmodel = \"m\"\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("t.toml"), served).expect("write");
    let specs = config::load_dir(dir.path()).expect("valid");
    let providers: Vec<_> = specs[0]
        .providers
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.settings.clone(),
                p.base_url.as_str(),
                p.credentials.clone(),
            )
        })
        .collect();
    assert_eq!(
        providers,
        [
            (
                "classic",
                ProviderSettings::AzureOpenAi {
                    api: AzureApi::Deployments {
                        api_version: "2024-10-21".into()
                    }
                },
                "https://r.openai.azure.com",
                CredentialSource::ApiKey { env: "AZ".into() }
            ),
            (
                "oa",
                ProviderSettings::OpenAi {
                    organization: Some("org-1".into()),
                    project: None
                },
                "https://api.openai.com/v1",
                CredentialSource::ApiKey { env: "OA".into() }
            ),
            (
                "v1",
                ProviderSettings::AzureOpenAi { api: AzureApi::V1 },
                "https://r.openai.azure.com/openai/v1",
                CredentialSource::EntraToken {
                    env: "AZ_TOKEN".into()
                }
            ),
        ]
    );

    // Gemini and Bedrock are served too: Gemini's base URL and API version default, a
    // Bedrock region names the default endpoint, and either Bedrock credential form.
    let later = format!(
        "{head}[providers.gem]\ntype = \"gemini\"\napi_key_env = \"G\"\n\n\
         [providers.br]\ntype = \"bedrock\"\nregion = \"eu-west-1\"\naccess_key_id_env = \"A\"\nsecret_access_key_env = \"S\"\nsession_token_env = \"T\"\n\n\
         [providers.brkey]\ntype = \"bedrock\"\nregion = \"us-east-1\"\napi_key_env = \"B\"\nendpoint = \"https://vpce.example\"\n"
    );
    fs::write(dir.path().join("t.toml"), later).expect("write");
    let specs = config::load_dir(dir.path()).expect("valid");
    let providers: Vec<_> = specs[0]
        .providers
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.settings.clone(),
                p.base_url.as_str(),
                p.credentials.clone(),
            )
        })
        .collect();
    assert_eq!(
        providers,
        [
            (
                "br",
                ProviderSettings::Bedrock {
                    region: "eu-west-1".into()
                },
                "https://bedrock-runtime.eu-west-1.amazonaws.com",
                CredentialSource::Aws {
                    access_key_id_env: "A".into(),
                    secret_access_key_env: "S".into(),
                    session_token_env: Some("T".into())
                }
            ),
            (
                "brkey",
                ProviderSettings::Bedrock {
                    region: "us-east-1".into()
                },
                "https://vpce.example",
                CredentialSource::ApiKey { env: "B".into() }
            ),
            (
                "gem",
                ProviderSettings::Gemini {
                    api_version: "v1beta".into()
                },
                "https://generativelanguage.googleapis.com",
                CredentialSource::ApiKey { env: "G".into() }
            ),
        ]
    );
}
