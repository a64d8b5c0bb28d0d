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
    /// Run the strict provider emulator (OpenAI wire format) on loopback, for tests, demos and
    /// load tests.
    ///
    /// It accepts only its own key (`Authorization: Bearer sk-emulator-openai` unless
    /// --openai-key says otherwise) and rejects what OpenAI rejects: unknown parameters,
    /// malformed bodies, `stream_options` without `stream`, unknown `previous_response_id`.
    ///
    /// Faults are scripted as `key=value` pairs joined by commas, from three sources merged per
    /// key (later wins): a base-URL prefix `/fault/SPEC/v1` (per route), the `x-emulator-fault`
    /// header, and a `[emulator:SPEC]` marker anywhere in the request body (per request, through
    /// any gateway, since the prompt travels upstream unchanged). Keys:
    ///   status=CODE         answer with that HTTP status and an OpenAI error body;
    ///   retry_after=SECS    `retry-after` hints on that error (429 defaults to 1);
    ///   times=N, key=NAME   fault only the first N requests counted under NAME;
    ///   latency_ms=MS       delay before the response headers;
    ///   first_byte_ms=MS    delay between the headers and the first stream chunk;
    ///   chunk_ms=MS         delay between stream chunks;
    ///   midstream_error=K   after K chunks, an error event, then a clean end;
    ///   drop=K              after K stream events (or half a plain body), abort the connection;
    ///   tokens=N            reply length in words (default 12).
    /// A bad spec is answered with 400 `invalid_fault_spec`, so a test never runs without its
    /// fault.
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
    /// HTTP worker threads (0: one per available core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
}
