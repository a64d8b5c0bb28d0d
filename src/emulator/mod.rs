//! The provider emulator behind `switchyard emulate`: a strict, fast stand-in for the paid
//! providers that the gateway's tests, the README demo and the load tests run against. This file
//! owns the public entry point (configuration and server setup) and the state shared by the
//! workers. Each provider's wire format lives in its own module (`openai`, `azure`, `gemini`,
//! `bedrock`), with its own private wire types, never the gateway's (a shared type would let
//! the emulator confirm the gateway's own mistakes); Azure runs `openai`'s request and answer
//! code in its dialect, because its shapes are OpenAI's. What every provider shares is the
//! reply planner (`reply`: the canned answer, its token counts and tool calls), the scriptable
//! faults (`faults`) and the provider-neutral steps of an exchange (`exchange`: body, fault
//! resolution, paced bodies). It binds no socket itself: the caller hands it a listener, so
//! tests can use port 0 and the CLI can choose its address.
//!
//! Every route is served twice: as the provider serves it (`/v1/chat/completions`,
//! `/v1beta/models/…`, `/model/…/converse`, `/openai/…`) and under a fault prefix
//! (`/fault/{spec}/v1/chat/completions`), so a gateway route whose base URL carries the prefix
//! scripts a fault for every request it sends.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};

mod azure;
mod bedrock;
mod exchange;
mod faults;
mod gemini;
mod openai;
mod reply;

/// The API key the emulator accepts for OpenAI when none is configured.
pub const DEFAULT_OPENAI_KEY: &str = "sk-emulator-openai";

/// The API key the emulator accepts for Gemini (`x-goog-api-key` or `?key=`) when none is
/// configured. Google keys start with `AIza`; so does this one, for gateways that check.
pub const DEFAULT_GEMINI_KEY: &str = "AIzaSy-switchyard-emulator-gemini-key0";

/// The Azure OpenAI key (`api-key` header; on the v1 API also `Authorization: Bearer`).
pub const DEFAULT_AZURE_KEY: &str = "a2e0c0ffee0e0u1a70r0a2e0c0ffee00";
/// The Microsoft Entra access token the Azure routes accept as `Authorization: Bearer`.
pub const DEFAULT_AZURE_ENTRA_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJhdWQiOiJodHRwczovL2NvZ25pdGl2ZXNlcnZpY2VzLmF6dXJlLmNvbSJ9.emulator";

/// The AWS access key id the Bedrock routes accept in a SigV4 signature.
pub const DEFAULT_BEDROCK_ACCESS_KEY_ID: &str = "AKIAEMULATORBEDROCK0";
/// The secret that goes with [`DEFAULT_BEDROCK_ACCESS_KEY_ID`].
pub const DEFAULT_BEDROCK_SECRET_ACCESS_KEY: &str = "emulator/Bedrock/SecretAccessKey/000000000";
/// The only `x-amz-security-token` (temporary credentials) the Bedrock routes accept; requests
/// signed without a token are accepted too.
pub const DEFAULT_BEDROCK_SESSION_TOKEN: &str = "emulator-bedrock-session-token";
/// The region SigV4 signatures must be scoped to.
pub const DEFAULT_BEDROCK_REGION: &str = "us-east-1";
/// A `bedrock_region` that stands in for every region: a signature scoped to any region is
/// verified with that region (what `serve --emulator` uses, since tenants name their own).
pub const ANY_BEDROCK_REGION: &str = "*";
/// The Bedrock API key (`Authorization: Bearer`, as `AWS_BEARER_TOKEN_BEDROCK`) accepted
/// instead of SigV4. Real ones start with `ABSK`.
pub const DEFAULT_BEDROCK_API_KEY: &str = "ABSKemulator-bedrock-api-key";

/// How the emulator runs.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// The only key `Authorization: Bearer …` may carry on the OpenAI routes.
    pub openai_api_key: String,
    /// The only key the Gemini routes accept.
    pub gemini_api_key: String,
    /// The Azure OpenAI key and the Entra token the Azure routes accept.
    pub azure_api_key: String,
    pub azure_entra_token: String,
    /// The credentials, session token and region SigV4 signatures on the Bedrock routes are
    /// verified against ([`ANY_BEDROCK_REGION`] for any region).
    pub bedrock_access_key_id: String,
    pub bedrock_secret_access_key: String,
    pub bedrock_session_token: String,
    pub bedrock_region: String,
    /// The Bedrock API key accepted as `Authorization: Bearer`.
    pub bedrock_api_key: String,
    /// Worker threads; 0 keeps actix's default (one per core).
    pub workers: usize,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            openai_api_key: DEFAULT_OPENAI_KEY.to_owned(),
            gemini_api_key: DEFAULT_GEMINI_KEY.to_owned(),
            azure_api_key: DEFAULT_AZURE_KEY.to_owned(),
            azure_entra_token: DEFAULT_AZURE_ENTRA_TOKEN.to_owned(),
            bedrock_access_key_id: DEFAULT_BEDROCK_ACCESS_KEY_ID.to_owned(),
            bedrock_secret_access_key: DEFAULT_BEDROCK_SECRET_ACCESS_KEY.to_owned(),
            bedrock_session_token: DEFAULT_BEDROCK_SESSION_TOKEN.to_owned(),
            bedrock_region: DEFAULT_BEDROCK_REGION.to_owned(),
            bedrock_api_key: DEFAULT_BEDROCK_API_KEY.to_owned(),
            workers: 0,
        }
    }
}

/// State shared by every worker: built once, before the workers start, so the response store
/// and the fault counters are one per emulator rather than one per thread.
struct State {
    openai: openai::OpenAiState,
    gemini: gemini::GeminiState,
    bedrock: bedrock::BedrockState,
    azure: azure::AzureState,
    faults: faults::Counters,
}

/// Binds nothing itself: serves on the given listener. The returned Server must be
/// awaited/spawned by the caller (runs on the caller's actix System).
pub fn server(config: EmulatorConfig, listener: TcpListener) -> std::io::Result<Server> {
    let state = web::Data::new(State {
        openai: openai::OpenAiState::new(config.openai_api_key),
        gemini: gemini::GeminiState::new(config.gemini_api_key),
        azure: azure::AzureState::new(config.azure_api_key, config.azure_entra_token),
        bedrock: bedrock::BedrockState::new(
            bedrock::Keys {
                access_key_id: config.bedrock_access_key_id,
                secret_access_key: config.bedrock_secret_access_key,
                session_token: config.bedrock_session_token,
                region: config.bedrock_region,
            },
            config.bedrock_api_key,
        ),
        faults: faults::Counters::default(),
    });
    let mut http = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .service(
                web::scope("/fault/{spec}")
                    .configure(openai::routes)
                    .configure(gemini::routes)
                    .configure(bedrock::routes)
                    .configure(azure::routes),
            )
            .configure(openai::routes)
            .configure(gemini::routes)
            .configure(bedrock::routes)
            .configure(azure::routes)
            .default_service(web::to(openai::not_found))
    })
    // Streams are short and the emulator holds nothing worth draining for long on shutdown.
    .shutdown_timeout(5)
    // As the providers' own servers do: without it, an event written while the previous write
    // is unacknowledged waits for the peer's delayed ACK (~40 ms), and every stream through
    // the emulator would show that stall (loadtests/ttft.py measured it).
    .tcp_nodelay(true);
    if config.workers > 0 {
        http = http.workers(config.workers);
    }
    Ok(http.listen(listener)?.run())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `switchyard emulate --help` spells the credentials out for people; it must not drift
    /// from the constants the emulator checks.
    #[test]
    fn help_names_every_default_credential() {
        let mut cli = crate::cli::Cli::command();
        let help = cli
            .find_subcommand_mut("emulate")
            .expect("emulate subcommand")
            .render_long_help()
            .to_string();
        for value in [
            DEFAULT_OPENAI_KEY,
            DEFAULT_AZURE_KEY,
            DEFAULT_GEMINI_KEY,
            DEFAULT_BEDROCK_ACCESS_KEY_ID,
            DEFAULT_BEDROCK_SECRET_ACCESS_KEY,
            DEFAULT_BEDROCK_SESSION_TOKEN,
            DEFAULT_BEDROCK_REGION,
            DEFAULT_BEDROCK_API_KEY,
        ] {
            assert!(help.contains(value), "help lacks {value}");
        }
        for key in [
            "status=",
            "retry_after=",
            "times=",
            "key=",
            "latency_ms=",
            "first_byte_ms=",
            "chunk_ms=",
            "midstream_error=",
            "drop=",
            "tokens=",
        ] {
            assert!(help.contains(key), "help lacks {key}");
        }
    }
}
