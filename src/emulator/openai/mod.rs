//! The OpenAI API as the emulator serves it: `POST /v1/chat/completions`, `POST /v1/responses`,
//! `GET /v1/responses/{id}` and `GET /v1/models`. This module owns OpenAI's side of the
//! emulator: authentication, request validation (as strict as OpenAI: unknown parameters, bad
//! types, bad roles and broken tool-call sequences are refused with OpenAI's own messages), the
//! response store behind `previous_response_id`, and the private wire types, which follow the
//! shapes in `fixtures/openai/`. The two endpoints live in `chat` and `responses`. What the model
//! answers comes from the shared planner in `reply`, fault scripting from `faults`; this module
//! only decides how each looks on OpenAI's wire (error bodies, `data: {"error":…}` events).

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use super::State;
use super::exchange::{self, BodyError, MAX_BODY};
use super::faults::{Active, FaultSource, FaultSpecError};
use super::reply::{
    Body, FnTool, Reply, TextStats, ToolChoice, alnum_id, hex_id, pick_tool, unix_now, words,
};

// ---------------------------------------------------------------------------------------------
// Constants: what OpenAI accepts and says.
// ---------------------------------------------------------------------------------------------

/// Every top-level Chat Completions parameter of the current SDK
/// (`types/chat/completion_create_params.py`, openai-python 3.54). Anything else is refused.
const CHAT_PARAMS: [&str; 37] = [
    "messages",
    "model",
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "moderation",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
];

/// Every top-level Responses parameter of the current SDK (`types/responses/
/// response_create_params.py`, openai-python 3.54).
const RESPONSES_PARAMS: [&str; 34] = [
    "access_programs",
    "background",
    "background_options",
    "context_management",
    "conversation",
    "image",
    "include",
    "input",
    "instructions",
    "max_output_tokens",
    "max_tool_calls",
    "metadata",
    "model",
    "moderation",
    "parallel_tool_calls",
    "previous_response_id",
    "prompt",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "reasoning",
    "safety_identifier",
    "service_tier",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "truncation",
    "user",
];

const CHAT_ROLES: [&str; 6] = [
    "system",
    "assistant",
    "user",
    "function",
    "tool",
    "developer",
];
const CHAT_PART_TYPES: [&str; 6] = [
    "text",
    "image_url",
    "input_audio",
    "refusal",
    "audio",
    "file",
];
const INPUT_ROLES: [&str; 4] = ["assistant", "system", "developer", "user"];
const INPUT_PART_TYPES: [&str; 7] = [
    "input_text",
    "input_image",
    "output_text",
    "refusal",
    "input_file",
    "computer_screenshot",
    "summary_text",
];
const INPUT_ITEM_TYPES: [&str; 14] = [
    "message",
    "function_call",
    "function_call_output",
    "reasoning",
    "item_reference",
    "file_search_call",
    "web_search_call",
    "computer_call",
    "computer_call_output",
    "image_generation_call",
    "code_interpreter_call",
    "mcp_call",
    "custom_tool_call",
    "custom_tool_call_output",
];
const SERVICE_TIERS: [&str; 6] = ["auto", "default", "flex", "scale", "priority", "fast"];
const EFFORTS: [&str; 6] = ["none", "minimal", "low", "medium", "high", "xhigh"];
const VERBOSITIES: [&str; 3] = ["low", "medium", "high"];
const FORMAT_TYPES: [&str; 3] = ["text", "json_object", "json_schema"];
const TOOL_CHOICES: [&str; 3] = ["none", "auto", "required"];

const MISSING_KEY: &str = "You didn't provide an API key. You need to provide your API key in an \
    Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the \
    password field (with blank username) if you're accessing the API from your browser and are \
    prompted for a username and password. You can obtain an API key from \
    https://platform.openai.com/account/api-keys.";
const BAD_JSON: &str = "We could not parse the JSON body of your request. (HINT: This likely \
    means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
    but what was sent was not valid JSON. If you have trouble figuring out how to fix this, \
    please contact us through our help center at help.openai.com.)";
const SERVER_ERROR: &str =
    "The server had an error while processing your request. Sorry about that!";
const MIDSTREAM_ERROR: &str = "The server had an error while processing your request. Sorry \
    about that! (emulated mid-stream fault)";

/// OpenAI's floor for `max_output_tokens` on the Responses API.
const MIN_OUTPUT_TOKENS: i64 = 16;
const FINGERPRINT: &str = "fp_emulator";
const JSON: &str = "application/json";
const SSE: &str = "text/event-stream; charset=utf-8";

static EMPTY_OBJECT: LazyLock<Value> = LazyLock::new(|| Value::Object(Map::new()));
static EMPTY_ARRAY: LazyLock<Value> = LazyLock::new(|| Value::Array(Vec::new()));
static AUTO: LazyLock<Value> = LazyLock::new(|| Value::String("auto".to_owned()));
static TEXT_FORMAT: LazyLock<Value> =
    LazyLock::new(|| serde_json::json!({ "format": { "type": "text" } }));

/// `GET /v1/models`: a few ids in OpenAI's list shape, serialised once.
static MODELS: LazyLock<Bytes> = LazyLock::new(|| {
    let models = [
        ("gpt-4o", 1_715_367_049_u64),
        ("gpt-4o-mini", 1_721_172_741),
        ("gpt-4.1", 1_744_316_542),
        ("gpt-4.1-mini", 1_744_318_173),
        ("o3-mini", 1_737_146_383),
        ("gpt-5", 1_754_425_777),
    ];
    let data: Vec<Value> = models
        .iter()
        .map(|(id, created)| {
            serde_json::json!({ "id": id, "object": "model", "created": created, "owned_by": "system" })
        })
        .collect();
    Bytes::from(serde_json::json!({ "object": "list", "data": data }).to_string())
});

// ---------------------------------------------------------------------------------------------
// State and routes.
// ---------------------------------------------------------------------------------------------

/// What the OpenAI endpoints share across workers.
pub(super) struct OpenAiState {
    api_key: String,
    /// Stored Responses (`store` defaults to true), for `GET /v1/responses/{id}` and
    /// `previous_response_id`. Bounded, so a long load test cannot grow it without limit.
    responses: moka::sync::Cache<String, Arc<Stored>>,
}

impl OpenAiState {
    pub(super) fn new(api_key: String) -> Self {
        Self {
            api_key,
            responses: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }
}

/// A stored Response: its JSON as served, plus what a follow-up request needs.
struct Stored {
    json: Bytes,
    /// Input plus output tokens of the stored turn: a follow-up's prompt includes them.
    context_tokens: u64,
    /// Function-call ids the stored turn produced, which a follow-up may answer.
    call_ids: Vec<String>,
}

/// Registers the OpenAI routes (relative, so `mod.rs` can mount them under the fault prefix).
pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/chat/completions")
            .route(web::post().to(chat_completions))
            .default_service(web::to(not_found)),
    )
    .service(
        web::resource("/v1/responses")
            .route(web::post().to(create_response))
            .default_service(web::to(not_found)),
    )
    .service(
        web::resource("/v1/responses/{id}")
            .route(web::get().to(get_response))
            .default_service(web::to(not_found)),
    )
    .service(
        web::resource("/v1/models")
            .route(web::get().to(list_models))
            .default_service(web::to(not_found)),
    );
}

/// Unknown paths and methods, answered the way OpenAI answers them.
pub(super) async fn not_found(req: HttpRequest) -> HttpResponse {
    let message = format!("Invalid URL ({} {})", req.method(), req.path());
    ApiError::new(StatusCode::NOT_FOUND, message).respond(&Ctx::new())
}

async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    match admit(&req, Some(payload), &state).await {
        Ok(adm) => chat::answer(&adm).unwrap_or_else(|e| e.respond(&adm.ctx)),
        Err(response) => response,
    }
}

async fn create_response(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    match admit(&req, Some(payload), &state).await {
        Ok(adm) => responses::answer(&adm, &state.openai).unwrap_or_else(|e| e.respond(&adm.ctx)),
        Err(response) => response,
    }
}

async fn get_response(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let adm = match admit(&req, None, &state).await {
        Ok(adm) => adm,
        Err(response) => return response,
    };
    let id = req.match_info().get("id").unwrap_or_default();
    match state.openai.responses.get(id) {
        Some(stored) => adm.json(stored.json.clone()),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Response with id '{id}' not found."),
        )
        .respond(&adm.ctx),
    }
}

/// A stored response's JSON, for the Azure dialect's `GET …/responses/{id}`.
pub(super) fn stored_response(state: &OpenAiState, id: &str) -> Option<Bytes> {
    state.responses.get(id).map(|stored| stored.json.clone())
}

/// `200 application/json` with `body`, in `ctx`'s dialect.
pub(super) fn json_answer(ctx: &Ctx, body: Bytes) -> HttpResponse {
    ctx.builder(StatusCode::OK, JSON).body(body)
}

async fn list_models(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    match admit(&req, None, &state).await {
        Ok(adm) => adm.json(MODELS.clone()),
        Err(response) => response,
    }
}

// ---------------------------------------------------------------------------------------------
// Per-request context, errors and admission (auth, body, faults).
// ---------------------------------------------------------------------------------------------

/// What every answer carries: the request id and the start time for `openai-processing-ms`.
pub(super) struct Ctx {
    request_id: String,
    start: Instant,
    dialect: Dialect,
}

impl Ctx {
    fn new() -> Self {
        Self::with(Dialect::OpenAi)
    }

    /// The request id, for the other dialects' own error bodies.
    pub(super) fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The same request (id, clock) answered in another dialect.
    pub(super) fn into_dialect(self, dialect: Dialect) -> Self {
        Self { dialect, ..self }
    }

    pub(super) fn with(dialect: Dialect) -> Self {
        Self {
            request_id: format!("req_{:032x}", fastrand::u128(..)),
            start: Instant::now(),
            dialect,
        }
    }

    /// A response builder with OpenAI's headers (Azure's gateway headers for Azure).
    fn builder(&self, status: StatusCode, content_type: &'static str) -> HttpResponseBuilder {
        let mut builder = HttpResponse::build(status);
        builder
            .insert_header((header::CONTENT_TYPE, content_type))
            .insert_header(("x-request-id", self.request_id.as_str()));
        if let Dialect::Azure(_) = self.dialect {
            builder
                .insert_header(("apim-request-id", self.request_id.as_str()))
                .insert_header(("x-ms-region", "East US"));
        } else {
            let millis = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            builder
                .insert_header(("openai-processing-ms", millis))
                .insert_header(("openai-version", "2020-10-01"));
        }
        builder
    }
}

/// Whose OpenAI API this is. Azure OpenAI serves the same request and answer shapes, with its
/// own URLs, auth and error quirks (all in `azure`), plus what it adds to the answers: the model
/// version for the deployment and the content-filter annotations, handed in here so that the
/// chat and responses code stays one copy.
#[derive(Clone, Copy)]
pub(super) enum Dialect {
    OpenAi,
    Azure(AzureAnswer),
}

/// What Azure adds to a chat answer. The JSON comes from `azure`, which owns Azure's wire
/// format; this module only knows where each piece goes.
#[derive(Debug)]
pub(super) struct AzureAnnotations {
    /// Top-level `prompt_filter_results` of a completion.
    pub prompt_filter_results: Value,
    /// A choice's `content_filter_results` when nothing was filtered.
    pub safe: Value,
    /// A choice's `content_filter_results` when the output was filtered.
    pub filtered: Value,
    /// The first frame of every Azure chat stream: empty id and choices, the prompt verdict.
    pub filter_frame: Bytes,
}

/// An Azure request's answer settings.
#[derive(Clone, Copy, Debug)]
pub(super) struct AzureAnswer {
    /// The model version the deployment runs (`gpt-4o-2024-11-20`), shown as `model`.
    pub model: &'static str,
    /// The output filter cuts this answer (`finish_reason: content_filter`).
    pub filter_output: bool,
    /// The URL names the deployment, so the body's `model` may be left out.
    pub deployment_in_url: bool,
    pub annotations: &'static AzureAnnotations,
}

/// An OpenAI-shaped error: `{"error":{"message","type","param","code"}}` with a status.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    /// Adds `retry-after`/`retry-after-ms` (and, on 429, `x-ratelimit-*`) headers.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// A 400 `invalid_request_error`.
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub(super) fn respond(&self, ctx: &Ctx) -> HttpResponse {
        let body = ErrorBody {
            error: ErrorObject {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        let mut builder = ctx.builder(self.status, JSON);
        if let Some(secs) = self.retry_after {
            builder
                .insert_header((header::RETRY_AFTER, secs))
                .insert_header(("retry-after-ms", secs.saturating_mul(1000)));
            if self.status == StatusCode::TOO_MANY_REQUESTS {
                builder
                    .insert_header(("x-ratelimit-limit-requests", 60_u64))
                    .insert_header(("x-ratelimit-remaining-requests", 0_u64))
                    .insert_header(("x-ratelimit-reset-requests", format!("{secs}s")));
            }
        }
        builder.body(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// The answer to a `status=` fault, typed the way OpenAI types that status.
    fn emulated(status: u16, retry_after: Option<u64>) -> Self {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut error = match status {
            429 => {
                let secs = retry_after.unwrap_or(1);
                let mut e = Self::new(
                    code,
                    format!(
                        "Rate limit reached in organization org-emulator on requests per min \
                         (RPM): Limit 60, Used 60, Requested 1. Please try again in {secs}s. \
                         Visit https://platform.openai.com/account/rate-limits to learn more. \
                         (emulated fault)"
                    ),
                )
                .code("rate_limit_exceeded");
                e.kind = "requests";
                e.retry_after = Some(secs);
                return e;
            }
            401 => Self::new(code, "Incorrect API key provided. (emulated fault)")
                .code("invalid_api_key"),
            404 => Self::new(
                code,
                "The model does not exist or you do not have access to it. (emulated fault)",
            )
            .code("model_not_found"),
            500..=599 => {
                let mut e = Self::new(
                    code,
                    format!("{SERVER_ERROR} (emulated fault: HTTP {status})"),
                )
                .code("server_error");
                e.kind = "server_error";
                e
            }
            _ => Self::new(code, format!("Emulated fault: HTTP {status}.")),
        };
        error.retry_after = retry_after;
        error
    }
}

/// Everything a handler needs once a request is let in.
pub(super) struct Admitted {
    pub ctx: Ctx,
    pub body: Bytes,
    pub fault: Active,
}

impl Admitted {
    /// A `200 application/json` answer (paced and cut by the body faults).
    fn json(&self, body: impl Into<Bytes>) -> HttpResponse {
        exchange::whole(self.ctx.builder(StatusCode::OK, JSON), &self.fault, body)
    }

    /// A `200 text/event-stream` answer, one body chunk per event.
    fn sse(&self, frames: Vec<Bytes>) -> HttpResponse {
        let mut builder = self.ctx.builder(StatusCode::OK, SSE);
        builder.insert_header((header::CACHE_CONTROL, "no-cache"));
        exchange::stream(builder, &self.fault, frames)
    }

    /// How many output tokens (words) the reply has.
    fn tokens(&self) -> u64 {
        words(&self.fault)
    }
}

/// Authenticates, reads the body, resolves the faults and applies the ones that act before any
/// answer exists (latency, status). Auth comes first, as at OpenAI: a 401 test is never
/// disturbed by a fault and a keyless client learns nothing more.
async fn admit(
    req: &HttpRequest,
    payload: Option<web::Payload>,
    state: &State,
) -> Result<Admitted, HttpResponse> {
    let ctx = Ctx::new();
    if let Err(e) = authenticate(req, &state.openai.api_key) {
        return Err(e.respond(&ctx));
    }
    let body = match payload {
        Some(payload) => read_body(payload).await.map_err(|e| e.respond(&ctx))?,
        None => Bytes::new(),
    };
    let fault = exchange::resolve_faults(req, &body, &state.faults)
        .await
        .map_err(|(source, e)| fault_spec_error(source, &e).respond(&ctx))?;
    if let Some(status) = fault.status {
        return Err(ApiError::emulated(status, fault.retry_after).respond(&ctx));
    }
    Ok(Admitted { ctx, body, fault })
}

pub(super) fn fault_spec_error(source: FaultSource, e: &FaultSpecError) -> ApiError {
    ApiError::invalid(format!("Invalid emulator fault spec in {source}: {e}."))
        .code("invalid_fault_spec")
}

/// `Authorization: Bearer <key>`, nothing else. The comparison is plain: the emulator guards a
/// test key, not a secret, so timing attacks are not a concern here (they are in the gateway).
fn authenticate(req: &HttpRequest, api_key: &str) -> Result<(), ApiError> {
    let missing = || ApiError::new(StatusCode::UNAUTHORIZED, MISSING_KEY);
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(missing)?;
    let value = String::from_utf8_lossy(value.as_bytes());
    let token = value
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
        .and_then(|_| value.get(7..))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(missing)?;
    if token == api_key {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        format!(
            "Incorrect API key provided: {}. You can find your API key at \
             https://platform.openai.com/account/api-keys.",
            mask_key(token)
        ),
    )
    .code("invalid_api_key"))
}

/// OpenAI's masking of a wrong key: the first 8 and last 4 characters stay, the rest become
/// `*` (so `sk-4sJHr…w8ZP` keeps its length); keys too short to hide anything are echoed, as
/// OpenAI echoes `API_KEY` or `undefined`.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 12 {
        return key.to_owned();
    }
    let mut out = String::with_capacity(chars.len());
    out.extend(&chars[..8]);
    out.extend(std::iter::repeat_n('*', chars.len() - 12));
    out.extend(&chars[chars.len() - 4..]);
    out
}

pub(super) async fn read_body(payload: web::Payload) -> Result<Bytes, ApiError> {
    exchange::read_body(payload).await.map_err(|e| match e {
        BodyError::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large: the emulator accepts at most {MAX_BODY} bytes."),
        ),
        BodyError::Broken(reason) => ApiError::invalid(format!("{BAD_JSON} ({reason})")),
    })
}

/// A `tool_choice` naming a function that `tools` does not offer.
fn unknown_tool(name: &str) -> ApiError {
    ApiError::invalid(format!(
        "Tool choice '{name}' not found in 'tools' parameter."
    ))
    .param("tool_choice")
}

/// The body must be one JSON object. OpenAI's own message says only that parsing failed; the
/// emulator appends the parser's reason so a failing test shows what was wrong.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::invalid(format!(
            "{BAD_JSON} (The body must be a JSON object, but it is {}.)",
            kind_of(&other)
        ))),
        Err(e) => Err(ApiError::invalid(format!("{BAD_JSON} (Parse error: {e}.)"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Validation helpers: OpenAI's messages, one place.
// ---------------------------------------------------------------------------------------------

/// The article-and-noun OpenAI uses for a JSON type in its messages.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(format!(
        "Invalid type for '{param}': expected {expected}, but got {} instead.",
        kind_of(got)
    ))
    .param(param)
    .code("invalid_type")
}

fn missing(param: &str) -> ApiError {
    ApiError::invalid(format!("Missing required parameter: '{param}'."))
        .param(param)
        .code("missing_required_parameter")
}

/// `'a', 'b', and 'c'`, as OpenAI lists supported values.
fn list(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [head @ .., last] => format!("{}, and {last}", head.join(", ")),
    }
}

fn invalid_value(param: &str, got: &str, supported: &[&str]) -> ApiError {
    ApiError::invalid(format!(
        "Invalid value: '{got}'. Supported values are: {}.",
        list(supported)
    ))
    .param(param)
    .code("invalid_value")
}

/// `None` for absent and for `null`: OpenAI treats an explicit null like an omitted optional.
fn present(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

fn as_bool(value: Option<&Value>, param: &str) -> Result<Option<bool>, ApiError> {
    match present(value) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid_type(param, "a boolean", other)),
    }
}

fn as_str<'a>(value: Option<&'a Value>, param: &str) -> Result<Option<&'a str>, ApiError> {
    match present(value) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid_type(param, "a string", other)),
    }
}

fn as_object<'a>(
    value: Option<&'a Value>,
    param: &str,
) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match present(value) {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(invalid_type(param, "an object", other)),
    }
}

fn as_array<'a>(value: Option<&'a Value>, param: &str) -> Result<Option<&'a [Value]>, ApiError> {
    match present(value) {
        None => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(other) => Err(invalid_type(param, "an array", other)),
    }
}

fn as_enum<'a>(
    value: Option<&'a Value>,
    param: &str,
    supported: &[&str],
) -> Result<Option<&'a str>, ApiError> {
    match as_str(value, param)? {
        Some(s) if !supported.contains(&s) => Err(invalid_value(param, s, supported)),
        other => Ok(other),
    }
}

fn as_int(
    value: Option<&Value>,
    param: &str,
    min: i64,
    max: Option<i64>,
) -> Result<Option<i64>, ApiError> {
    let Some(value) = present(value) else {
        return Ok(None);
    };
    let n = match value {
        Value::Number(n) if n.is_i64() => n.as_i64().unwrap_or_default(),
        // Beyond i64: only possible above any maximum we check.
        Value::Number(n) if n.is_u64() => i64::MAX,
        other => return Err(invalid_type(param, "an integer", other)),
    };
    if n < min {
        return Err(ApiError::invalid(format!(
            "Invalid '{param}': integer below minimum value. Expected a value >= {min}, but got \
             {value} instead."
        ))
        .param(param)
        .code("integer_below_min_value"));
    }
    if let Some(max) = max.filter(|max| n > *max) {
        return Err(ApiError::invalid(format!(
            "Invalid '{param}': integer above maximum value. Expected a value <= {max}, but got \
             {value} instead."
        ))
        .param(param)
        .code("integer_above_max_value"));
    }
    Ok(Some(n))
}

fn as_decimal(
    value: Option<&Value>,
    param: &str,
    min: f64,
    max: f64,
) -> Result<Option<f64>, ApiError> {
    let Some(value) = present(value) else {
        return Ok(None);
    };
    let Some(n) = value.as_f64() else {
        return Err(invalid_type(param, "a decimal", value));
    };
    let (bound, word, code) = if n < min {
        (min, "below minimum", "decimal_below_min_value")
    } else if n > max {
        (max, "above maximum", "decimal_above_max_value")
    } else {
        return Ok(Some(n));
    };
    let sign = if n < min { ">=" } else { "<=" };
    Err(ApiError::invalid(format!(
        "Invalid '{param}': decimal {word} value. Expected a value {sign} {bound}, but got \
         {value} instead."
    ))
    .param(param)
    .code(code))
}

/// String-valued map such as `metadata`.
fn check_metadata(value: Option<&Value>) -> Result<(), ApiError> {
    if let Some(map) = as_object(value, "metadata")? {
        for (key, value) in map {
            as_str(Some(value), &format!("metadata.{key}"))?;
        }
    }
    Ok(())
}

/// One entry of `tools`: its parameter path and its members.
type ToolObject<'a> = (String, &'a Map<String, Value>);

/// The `tools` array as objects, each with its parameter path (`tools[i]`); chat and
/// Responses differ only in what they read from each.
fn tool_objects(tools: Option<&Value>) -> Result<Vec<ToolObject<'_>>, ApiError> {
    let mut out = Vec::new();
    for (i, tool) in as_array(tools, "tools")?
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let p = format!("tools[{i}]");
        let tool = as_object(Some(tool), &p)?.ok_or_else(|| missing(&p))?;
        out.push((p, tool));
    }
    Ok(out)
}

/// Function names: `^[a-zA-Z0-9_-]+$`, at most 64 characters.
fn check_function_name(name: &str, param: &str) -> Result<(), ApiError> {
    if name.len() > 64 {
        return Err(ApiError::invalid(format!(
            "Invalid '{param}': string too long. Expected a string with maximum length 64, but \
             got a string with length {} instead.",
            name.len()
        ))
        .param(param)
        .code("string_above_max_length"));
    }
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(ApiError::invalid(format!(
            "Invalid '{param}': string does not match pattern. Expected a string that matches \
             the pattern '^[a-zA-Z0-9_-]+$'."
        ))
        .param(param)
        .code("invalid_value"));
    }
    Ok(())
}

/// `stream` and `stream_options`, which OpenAI only accepts together with `stream: true`.
/// Returns `(stream, include_usage)`.
fn check_stream(root: &Map<String, Value>, usage_option: bool) -> Result<(bool, bool), ApiError> {
    let stream = as_bool(root.get("stream"), "stream")?.unwrap_or(false);
    let Some(options) = as_object(root.get("stream_options"), "stream_options")? else {
        return Ok((stream, false));
    };
    if !stream {
        return Err(ApiError::invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        )
        .param("stream_options"));
    }
    as_bool(
        options.get("include_obfuscation"),
        "stream_options.include_obfuscation",
    )?;
    let include_usage = if usage_option {
        as_bool(options.get("include_usage"), "stream_options.include_usage")?.unwrap_or(false)
    } else {
        false
    };
    Ok((stream, include_usage))
}

/// One SSE frame: `data: <json>\n\n`, or with `event` set, `event: <type>\ndata: <json>\n\n`.
fn sse_frame<T: Serialize>(event: Option<&str>, value: &T) -> Result<Bytes, ApiError> {
    let mut buf = Vec::with_capacity(256);
    if let Some(event) = event {
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(event.as_bytes());
        buf.push(b'\n');
    }
    buf.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut buf, value).map_err(internal)?;
    buf.extend_from_slice(b"\n\n");
    Ok(Bytes::from(buf))
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(internal)
}

fn internal(e: serde_json::Error) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{SERVER_ERROR} (emulator: {e})"),
    );
    error.kind = "server_error";
    error
}

mod chat;
mod responses;

/// The answer to a `status=` fault in OpenAI's shape, for dialects that pass OpenAI's errors
/// through.
pub(super) fn emulated_error(status: u16, retry_after: Option<u64>) -> ApiError {
    ApiError::emulated(status, retry_after)
}

/// Chat Completions for another dialect's front door (Azure), once it has admitted the request.
pub(super) fn chat_answer(adm: &Admitted) -> HttpResponse {
    chat::answer(adm).unwrap_or_else(|e| e.respond(&adm.ctx))
}

/// Responses for another dialect's front door (Azure), once it has admitted the request.
pub(super) fn responses_answer(adm: &Admitted, state: &OpenAiState) -> HttpResponse {
    responses::answer(adm, state).unwrap_or_else(|e| e.respond(&adm.ctx))
}

// ---------------------------------------------------------------------------------------------
// Wire types (private): field order follows OpenAI's documented examples.
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChatChoice<'a>>,
    usage: ChatUsage,
    service_tier: &'a str,
    system_fingerprint: &'static str,
    /// Azure only.
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_filter_results: Option<&'a Value>,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
    /// Azure only.
    #[serde(skip_serializing_if = "Option::is_none")]
    content_filter_results: Option<&'a Value>,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<&'a str>,
    annotations: [(); 0],
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCall<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall<'a>,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptTokensDetails,
    completion_tokens_details: CompletionTokensDetails,
}

impl ChatUsage {
    fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: PromptTokensDetails::default(),
            completion_tokens_details: CompletionTokensDetails::default(),
        }
    }
}

#[derive(Default, Serialize)]
struct PromptTokensDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Default, Serialize)]
struct CompletionTokensDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

#[derive(Serialize)]
struct Chunk<'a, 'b> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    service_tier: &'a str,
    system_fingerprint: &'static str,
    choices: &'b [ChunkChoice<'b>],
    /// Absent without `include_usage`; `null` on every chunk with it, except the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'b ChatUsage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
    /// Azure only: `{}` on deltas, the verdict on the finish chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    content_filter_results: Option<&'a Value>,
}

#[derive(Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    /// `Some(None)` is an explicit `"content": null` (the role chunk of a tool call).
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Option<&'a str>>,
    /// Azure's role chunk says `"refusal": null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Clone, Copy, Serialize)]
struct ResponseObject<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    error: Option<ResponseError<'a>>,
    incomplete_details: Option<IncompleteDetails>,
    instructions: Option<&'a str>,
    max_output_tokens: Option<u64>,
    model: &'a str,
    output: &'a [OutputItem<'a>],
    parallel_tool_calls: bool,
    previous_response_id: Option<&'a str>,
    reasoning: Reasoning<'a>,
    store: bool,
    temperature: f64,
    text: &'a Value,
    tool_choice: &'a Value,
    tools: &'a Value,
    top_p: f64,
    truncation: &'a str,
    usage: Option<&'a ResponseUsage>,
    user: Option<&'a str>,
    metadata: &'a Value,
}

#[derive(Clone, Copy, Serialize)]
struct ResponseError<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Clone, Copy, Serialize)]
struct IncompleteDetails {
    reason: &'static str,
}

#[derive(Clone, Copy, Default, Serialize)]
struct Reasoning<'a> {
    effort: Option<&'a str>,
    summary: Option<&'a str>,
}

#[derive(Serialize)]
struct ResponseUsage {
    input_tokens: u64,
    input_tokens_details: InputTokensDetails,
    output_tokens: u64,
    output_tokens_details: OutputTokensDetails,
    total_tokens: u64,
}

impl ResponseUsage {
    fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Self {
            input_tokens,
            input_tokens_details: InputTokensDetails {
                cached_tokens: 0,
                cache_write_tokens: 0,
            },
            output_tokens,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: 0,
            },
            total_tokens: input_tokens.saturating_add(output_tokens),
        }
    }
}

/// `cache_write_tokens` is newer than the documented examples; the current SDK requires it.
#[derive(Serialize)]
struct InputTokensDetails {
    cached_tokens: u64,
    cache_write_tokens: u64,
}

#[derive(Serialize)]
struct OutputTokensDetails {
    reasoning_tokens: u64,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutputItem<'a> {
    Message(MessageItem<'a>),
    FunctionCall(FunctionCallItem<'a>),
}

#[derive(Clone, Copy, Serialize)]
struct MessageItem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    status: &'static str,
    role: &'static str,
    content: &'a [OutputText<'a>],
}

impl<'a> MessageItem<'a> {
    fn new(id: &'a str, status: &'static str, content: &'a [OutputText<'a>]) -> Self {
        Self {
            kind: "message",
            id,
            status,
            role: "assistant",
            content,
        }
    }
}

#[derive(Clone, Copy, Serialize)]
struct OutputText<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    annotations: [(); 0],
}

impl<'a> OutputText<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            kind: "output_text",
            text,
            annotations: [],
        }
    }
}

#[derive(Clone, Copy, Serialize)]
struct FunctionCallItem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    call_id: &'a str,
    name: &'a str,
    arguments: &'a str,
    status: &'static str,
}

/// A Responses stream event: `type` and `sequence_number` around the event's own fields.
#[derive(Serialize)]
struct Event<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    sequence_number: u64,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Serialize)]
struct ResponseEvent<'a> {
    response: &'a ResponseObject<'a>,
}

#[derive(Serialize)]
struct ItemEvent<'a> {
    output_index: u32,
    item: &'a OutputItem<'a>,
}

#[derive(Serialize)]
struct PartEvent<'a> {
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    part: OutputText<'a>,
}

/// `response.output_text.delta` (with `delta`) and `.done` (with `text`).
#[derive(Serialize)]
struct TextEvent<'a> {
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    logprobs: [(); 0],
}

impl<'a> TextEvent<'a> {
    fn new(item_id: &'a str, delta: Option<&'a str>, text: Option<&'a str>) -> Self {
        Self {
            item_id,
            output_index: 0,
            content_index: 0,
            delta,
            text,
            logprobs: [],
        }
    }
}

/// `response.function_call_arguments.delta` (with `delta`) and `.done` (name and arguments).
#[derive(Serialize)]
struct ArgumentsEvent<'a> {
    item_id: &'a str,
    output_index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a str>,
}

#[derive(Serialize)]
struct StreamError<'a> {
    code: Option<&'a str>,
    message: &'a str,
    param: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keys_like_openai() {
        assert_eq!(
            mask_key("sk-4sJHrabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMw8ZP"),
            format!("sk-4sJHr{}w8ZP", "*".repeat(39))
        );
        assert_eq!(mask_key("API_KEY"), "API_KEY");
        assert_eq!(mask_key("sk-wrong-key-123456"), "sk-wrong*******3456");
    }

    #[test]
    fn lists_supported_values_like_openai() {
        assert_eq!(list(&["a"]), "'a'");
        assert_eq!(list(&["a", "b"]), "'a' and 'b'");
        assert_eq!(list(&["a", "b", "c"]), "'a', 'b', and 'c'");
    }
}
