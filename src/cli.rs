//! The command line: `serve`, `validate`, `emulate`, and the semantic-routing tools `route`,
//! `eval-routing` and `calibrate`.
//!
//! Each verb is a thin wrapper: parse flags (with environment fallbacks), call into the
//! library, print what a person needs, exit non-zero on failure.

use crate::telemetry::LogFormat;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Switchyard: a multi-tenant, OpenAI-compatible LLM gateway.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr (`RUST_LOG` sets the level, default info).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "SWITCHYARD_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the tenants in a directory: one OpenAI-compatible endpoint per proxy, at
    /// http://ADDR/{tenant}/{proxy}/v1.
    ///
    /// Tenant files are validated first; any error stops the start with every problem listed.
    /// Provider keys and base-URL overrides are read from the environment variables the files
    /// name. With --emulator, the bundled provider emulator starts in the same process and every
    /// provider is pointed at it, so no provider key is needed (demos and tests only).
    Serve(ServeArgs),
    /// Check tenant files without serving: prints every error with file, field path and reason,
    /// and exits non-zero if there is any. Reads no secrets, so it runs anywhere.
    Validate {
        /// The tenants directory.
        #[arg(default_value = "tenants")]
        dir: PathBuf,
    },
    /// Run the strict provider emulator (OpenAI, Azure OpenAI, Gemini, Bedrock) on loopback,
    /// for tests, demos and load tests.
    ///
    /// Each provider is served on its own paths, with its own credentials (defaults below;
    /// flags override them), and refuses what that provider refuses, in its own error shape:
    ///   OpenAI   POST /v1/chat/completions, POST /v1/responses, GET /v1/responses/{id},
    ///            GET /v1/models; `Authorization: Bearer sk-emulator-openai`.
    ///   Azure    POST /openai/deployments/{deployment}/chat/completions?api-version=V,
    ///            POST /openai/deployments/{deployment}/responses?api-version=V,
    ///            POST /openai/responses?api-version=V, POST /openai/v1/chat/completions,
    ///            POST /openai/v1/responses; `api-key: a2e0c0ffee0e0u1a70r0a2e0c0ffee00`, or
    ///            `Authorization: Bearer` with the Entra token (on v1 also with the key).
    ///            Deployments are named after their model (gpt-4o, gpt-4o-prod, gpt-4.1 ...).
    ///            `[azure:content_filter]` in a prompt: the prompt filter's 400;
    ///            `[azure:content_filter_output]`: the output filter cuts the answer.
    ///   Gemini   POST /v1beta/models/{model}:generateContent,
    ///            POST /v1beta/models/{model}:streamGenerateContent[?alt=sse];
    ///            `x-goog-api-key: AIzaSy-switchyard-emulator-gemini-key0` or `?key=`.
    ///   Bedrock  POST /model/{modelId}/converse, POST /model/{modelId}/converse-stream,
    ///            POST /model/{modelId}/invoke, POST /model/{modelId}/invoke-with-response-stream
    ///            (Anthropic Messages body; modelId percent-encoded, anthropic.* models); SigV4 (service `bedrock`,
    ///            region us-east-1) with access key AKIAEMULATORBEDROCK0 and secret
    ///            emulator/Bedrock/SecretAccessKey/000000000 (optional session token
    ///            emulator-bedrock-session-token), or `Authorization: Bearer
    ///            ABSKemulator-bedrock-api-key`.
    ///
    /// Faults are scripted as `key=value` pairs joined by commas, from three sources merged per
    /// key (later wins): a base-URL prefix `/fault/SPEC/...` before any provider path (per
    /// route), the `x-emulator-fault` header, and a `[emulator:SPEC]` marker anywhere in the
    /// request body (per request, through any gateway, since the prompt travels upstream
    /// unchanged). Every provider supports every key, in its own format. Keys:
    ///   status=CODE         answer with that HTTP status and the provider's error (429: OpenAI
    ///                       retry-after headers, Azure Retry-After, Gemini RESOURCE_EXHAUSTED
    ///                       with RetryInfo, Bedrock ThrottlingException);
    ///   retry_after=SECS    the retry hint on that error (429 defaults to 1; Bedrock has none);
    ///   times=N, key=NAME   fault only the first N requests counted under NAME;
    ///   latency_ms=MS       delay before the response headers;
    ///   first_byte_ms=MS    delay between the headers and the first stream chunk;
    ///   chunk_ms=MS         delay between stream chunks;
    ///   midstream_error=K   after K content chunks, the provider's stream error (an SSE error
    ///                       event, Gemini's error object, a Bedrock exception frame);
    ///   drop=K              after K stream frames (or half a plain body), abort the connection;
    ///   tokens=N            reply length in words (default 12).
    /// A bad spec is refused with the provider's 400, so a test never runs without its fault.
    #[command(verbatim_doc_comment)]
    Emulate(EmulateArgs),
    /// Explain a semantic routing decision: prints the decision and every topic's score for
    /// TEXT on a proxy of the tenant files, exactly as the gateway would decide it.
    Route(RouteArgs),
    /// Routing accuracy on a labelled suite file (the format of semantic_eval_val.json): each
    /// suite becomes one semantic proxy and every case goes through the gateway's decision
    /// rule. Prints accuracy overall and per class (in-topic, deny, default), per suite and
    /// pooled.
    EvalRouting(EvalArgs),
    /// Pick the threshold that maximises pooled accuracy on a labelled suite file and print the
    /// table (with a leave-one-suite-out check of that choice).
    Calibrate(EvalArgs),
}

/// Where the sentence encoder's weights come from.
#[derive(Debug, Clone, clap::Args)]
pub struct EmbeddingArgs {
    /// A local directory with config.json, tokenizer.json and model.safetensors (offline
    /// installs); without it the model is fetched through the HuggingFace hub (or its cache).
    #[arg(long, env = "SWITCHYARD_EMBEDDING_MODEL_DIR", value_name = "DIR")]
    pub embedding_model_dir: Option<PathBuf>,
    /// The HuggingFace model id used when no directory is given.
    #[arg(long, default_value = crate::embedding::DEFAULT_MODEL, env = "SWITCHYARD_EMBEDDING_MODEL")]
    pub embedding_model: String,
    /// The sentence encoder: the transformer itself, or a static table of word-piece vectors
    /// distilled from it on first use and cached on disk (docs/semantic-routing.md compares
    /// them). Each has its own calibrated default threshold.
    #[arg(long, value_enum, default_value_t = crate::embedding::EncoderKind::default(), env = "SWITCHYARD_EMBEDDING_ENCODER")]
    pub embedding_encoder: crate::embedding::EncoderKind,
    /// Where the static encoder's distilled table is cached, for `route`, `eval-routing` and
    /// `calibrate` (`serve` uses --embedding-cache-dir); default as for serve.
    #[arg(
        long,
        value_name = "DIR",
        env = "SWITCHYARD_STATIC_CACHE_DIR",
        hide = true
    )]
    pub static_cache_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    /// The tenants directory.
    #[arg(long, default_value = "tenants", env = "SWITCHYARD_TENANTS")]
    pub tenants: PathBuf,
    /// The tenant id (file stem).
    #[arg(long)]
    pub tenant: String,
    /// The proxy id.
    #[arg(long)]
    pub proxy: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The prompt text.
    pub text: String,
    #[command(flatten)]
    pub embedding: EmbeddingArgs,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The suite file.
    pub file: PathBuf,
    /// The threshold (default: the gateway's default).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Topic score: centroid (default), max or mean.
    #[arg(long, default_value = "centroid")]
    pub aggregation: String,
    /// Ambiguity margin (default: the gateway's default).
    #[arg(long)]
    pub margin: Option<f32>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub embedding: EmbeddingArgs,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The tenants directory (one `<tenant>.toml` per tenant).
    #[arg(long, default_value = "tenants", env = "SWITCHYARD_TENANTS")]
    pub tenants: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080", env = "SWITCHYARD_LISTEN")]
    pub listen: String,
    /// HTTP worker threads (0: one per available core).
    #[arg(long, default_value_t = 0, env = "SWITCHYARD_WORKERS")]
    pub workers: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = crate::http::DEFAULT_MAX_BODY_BYTES, env = "SWITCHYARD_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,
    /// Seconds a request body may go quiet before the request gets a 408.
    #[arg(long, default_value_t = 15, env = "SWITCHYARD_BODY_TIMEOUT_SECS")]
    pub body_timeout_secs: u64,
    /// Where stored responses of translated providers (Gemini, Bedrock) are kept: `memory`
    /// (in process; a follow-up must reach the same replica) or `redis` (the `--redis` URL,
    /// shared by replicas).
    #[arg(long, value_enum, default_value_t = crate::api::response_store::Backend::default(), env = "SWITCHYARD_RESPONSE_STORE")]
    pub response_store: crate::api::response_store::Backend,
    /// Memory for stored responses of translated providers (Gemini, Bedrock), in MiB, with
    /// `--response-store memory`: the oldest go first when it is full.
    #[arg(long, default_value_t = 256, env = "SWITCHYARD_RESPONSE_STORE_MIB")]
    pub response_store_mib: u64,
    /// How long a stored response stays available to `previous_response_id` and `GET`, in seconds.
    #[arg(long, default_value_t = 24 * 3600, env = "SWITCHYARD_RESPONSE_STORE_TTL_SECS")]
    pub response_store_ttl_secs: u64,
    /// Where the usage ledger is kept: `sqlite://PATH` (embedded, the default), `postgres://…`
    /// (shared by replicas) or `off`.
    #[arg(
        long,
        default_value = "sqlite://switchyard-ledger.db",
        env = "SWITCHYARD_LEDGER"
    )]
    pub ledger: String,
    /// Redis for rate-limit counters and budgets shared by replicas (`redis://127.0.0.1:6379/`),
    /// and for stored responses with `--response-store redis`; kept in process when not given.
    #[arg(long, env = "SWITCHYARD_REDIS")]
    pub redis: Option<String>,
    /// Open connections allowed from one client address (0: no limit). Behind a load balancer
    /// every client shares its address: raise or disable this there.
    #[arg(long, default_value_t = crate::http::DEFAULT_MAX_CONNECTIONS_PER_CLIENT, env = "SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT")]
    pub max_connections_per_client: usize,
    /// On SIGTERM or SIGINT: how long in-flight requests and streams may take to finish once the
    /// listener has closed, in seconds; what is still open then is cut.
    #[arg(long, default_value_t = 30, env = "SWITCHYARD_SHUTDOWN_TIMEOUT_SECS")]
    pub shutdown_timeout_secs: u64,
    /// On SIGTERM or SIGINT: how long `/readyz` answers 503 while the listener still accepts,
    /// in milliseconds, so load balancers stop sending before connections are refused.
    #[arg(long, default_value_t = 0, env = "SWITCHYARD_DRAIN_DELAY_MS")]
    pub drain_delay_ms: u64,
    /// Do not watch the tenants directory (reload only through `POST /admin/reload`).
    #[arg(long, env = "SWITCHYARD_NO_WATCH")]
    pub no_watch: bool,
    /// Quiet time after the last change in the tenants directory before it is reloaded, in
    /// milliseconds.
    #[arg(long, default_value_t = 500, env = "SWITCHYARD_RELOAD_DEBOUNCE_MS")]
    pub reload_debounce_ms: u64,
    /// OTLP endpoint for trace export (default: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; export is off when none is set). For HTTP, the full URL
    /// (`.../v1/traces`). Headers come from `OTEL_EXPORTER_OTLP_HEADERS`.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport (default: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, then http/protobuf).
    #[arg(long, value_enum)]
    pub otlp_protocol: Option<crate::telemetry::otel::Protocol>,
    /// Also start the provider emulator on this address and send every provider there.
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:0", value_name = "ADDR")]
    pub emulator: Option<String>,
    #[command(flatten)]
    pub embedding: EmbeddingArgs,
    /// Threads of the embedding pool (semantic routing).
    #[arg(long, default_value_t = 1, env = "SWITCHYARD_EMBEDDING_THREADS")]
    pub embedding_threads: usize,
    /// Where utterance embeddings are cached (default: $SWITCHYARD_CACHE_DIR, else
    /// $XDG_CACHE_HOME/switchyard, else ~/.cache/switchyard).
    #[arg(long, value_name = "DIR")]
    pub embedding_cache_dir: Option<PathBuf>,
    /// Do not cache utterance embeddings on disk.
    #[arg(long)]
    pub no_embedding_cache: bool,
}

#[derive(Debug, clap::Args)]
pub struct EmulateArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(
        long,
        default_value = "127.0.0.1:9100",
        env = "SWITCHYARD_EMULATOR_LISTEN"
    )]
    pub listen: String,
    /// The only OpenAI key the emulator accepts.
    #[arg(long, default_value = crate::emulator::DEFAULT_OPENAI_KEY, env = "SWITCHYARD_EMULATOR_OPENAI_KEY")]
    pub openai_key: String,
    /// The only Azure OpenAI key the emulator accepts.
    #[arg(long, default_value = crate::emulator::DEFAULT_AZURE_KEY, env = "SWITCHYARD_EMULATOR_AZURE_KEY")]
    pub azure_key: String,
    /// The only Gemini key the emulator accepts.
    #[arg(long, default_value = crate::emulator::DEFAULT_GEMINI_KEY, env = "SWITCHYARD_EMULATOR_GEMINI_KEY")]
    pub gemini_key: String,
    /// The region Bedrock SigV4 signatures must be scoped to (`*`: any region, each
    /// signature verified with its own scope's region).
    #[arg(long, default_value = crate::emulator::DEFAULT_BEDROCK_REGION, env = "SWITCHYARD_EMULATOR_BEDROCK_REGION")]
    pub bedrock_region: String,
    /// HTTP worker threads (0: one per available core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
}

impl ServeArgs {
    /// The trace-export settings given on the command line.
    pub fn otel(&self) -> crate::telemetry::otel::OtelConfig {
        crate::telemetry::otel::OtelConfig {
            endpoint: self.otlp_endpoint.clone(),
            protocol: self.otlp_protocol,
        }
    }
}
