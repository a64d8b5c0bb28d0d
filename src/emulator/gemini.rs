//! Google's Gemini API (Generative Language, `v1beta`) as the emulator serves it:
//! `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent` (SSE with
//! `?alt=sse`, an incrementally written JSON array without). This module owns Gemini's side:
//! the key check (`x-goog-api-key` or `?key=`, a wrong key answered 400 `API_KEY_INVALID` as
//! Google does), proto-JSON strictness (every field of the request is checked against a table of
//! the `GenerateContentRequest` messages, in either camelCase or the proto's snake_case, and
//! unknown names are refused with Google's `Invalid JSON payload received. Unknown name …`), the
//! turn rules (roles `user`/`model`, function responses right after function calls, one response
//! per call), Google's error shape `{"error":{code,message,status,details}}`, and the private
//! wire types of the answer (candidates, finishReason, usageMetadata). What the model says comes
//! from the shared planner in `reply`; faults come from `faults`.
//!
//! Gemini-specific answer rules: a thinking request (`thinkingConfig` with a non-zero budget or
//! a level, or any `gemini-3` model, which always thinks) reports `thoughtsTokenCount` and, with
//! `includeThoughts`, a `thought: true` part first; `gemini-3` function calls carry a
//! `thoughtSignature` and a `gemini-3` request whose model turn has a function call without one
//! is refused, as Google refuses it; `cachedContent` adds [`CACHED_TOKENS`] to the prompt and
//! reports them as `cachedContentTokenCount`. A prompt holding `[gemini:blocked]` is blocked by
//! the safety filter: no candidate, `promptFeedback.blockReason` SAFETY.

use std::fmt::Write as _;
use std::sync::LazyLock;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use super::State;
use super::exchange::{self, BodyError, MAX_BODY};
use super::faults::{Active, FaultSource, FaultSpecError};
use super::reply::{Body, CACHED_TOKENS, FnTool, Reply, TextStats, ToolChoice, pick_tool, words};

/// Thinking tokens a thinking request spends before answering.
const THOUGHT_TOKENS: u64 = 6;
/// The thought summary an `includeThoughts` request sees.
const THOUGHT_TEXT: &str = "Thinking about the canned answer.";
/// What every `thoughtSignature` the emulator emits decodes to (base64 of a fixed marker), so
/// a test can recognise it when the gateway sends it back.
pub(crate) const THOUGHT_SIGNATURE: &str = "c3dpdGNoeWFyZC1lbXVsYXRvci1zaWduYXR1cmU=";

const JSON: &str = "application/json; charset=UTF-8";
const SSE: &str = "text/event-stream";
const PREFIX: &str = "type.googleapis.com/google.ai.generativelanguage.v1beta.";
const MISSING_KEY: &str = "Method doesn't allow unregistered callers (callers without \
    established identity). Please use API Key or other form of API consumer identity to call \
    this API.";
const BAD_KEY: &str = "API key not valid. Please pass a valid API key.";
/// A prompt holding this marker is blocked by the (emulated) safety filter.
const BLOCKED_MARKER: &[u8] = b"[gemini:blocked]";

// ---------------------------------------------------------------------------------------------
// The request schema: proto messages as tables, so one walker checks every field.
// ---------------------------------------------------------------------------------------------

/// What a field holds, as proto-JSON parses it.
enum Kind {
    Str,
    Int,
    Float,
    Bool,
    /// base64 in JSON.
    Bytes,
    /// A proto enum: the value names (case-sensitive, except the Schema `type`).
    Enum(&'static str, &'static [&'static str]),
    Msg(&'static Msg),
    List(&'static Kind),
    Map(&'static Kind),
    /// `google.protobuf.Struct`/`Value` or a message the emulator does not look into: any JSON.
    Any,
}

/// One field: its proto name (snake_case); proto-JSON also accepts the lowerCamelCase form.
struct Field(&'static str, Kind);

/// A proto message: its type name (for `Invalid value` messages) and its fields.
struct Msg {
    name: &'static str,
    fields: &'static [Field],
}

static REQUEST: Msg = Msg {
    name: "GenerateContentRequest",
    fields: &[
        Field("model", Kind::Str),
        Field("contents", Kind::List(&Kind::Msg(&CONTENT))),
        Field("tools", Kind::List(&Kind::Msg(&TOOL))),
        Field("tool_config", Kind::Msg(&TOOL_CONFIG)),
        Field("safety_settings", Kind::List(&Kind::Msg(&SAFETY_SETTING))),
        Field("system_instruction", Kind::Msg(&CONTENT)),
        Field("generation_config", Kind::Msg(&GENERATION_CONFIG)),
        Field("cached_content", Kind::Str),
    ],
};

static CONTENT: Msg = Msg {
    name: "Content",
    fields: &[
        Field("role", Kind::Str),
        Field("parts", Kind::List(&Kind::Msg(&PART))),
    ],
};

/// The members of Part's `data` oneof; exactly one must be set.
const PART_DATA: [&str; 7] = [
    "text",
    "inline_data",
    "file_data",
    "function_call",
    "function_response",
    "executable_code",
    "code_execution_result",
];

static PART: Msg = Msg {
    name: "Part",
    fields: &[
        Field("text", Kind::Str),
        Field("inline_data", Kind::Msg(&BLOB)),
        Field("file_data", Kind::Msg(&FILE_DATA)),
        Field("function_call", Kind::Msg(&FUNCTION_CALL)),
        Field("function_response", Kind::Msg(&FUNCTION_RESPONSE)),
        Field("executable_code", Kind::Any),
        Field("code_execution_result", Kind::Any),
        Field("thought", Kind::Bool),
        Field("thought_signature", Kind::Bytes),
        Field("video_metadata", Kind::Any),
        Field("part_metadata", Kind::Any),
        Field("media_resolution", Kind::Any),
    ],
};

static BLOB: Msg = Msg {
    name: "Blob",
    fields: &[Field("mime_type", Kind::Str), Field("data", Kind::Bytes)],
};

static FILE_DATA: Msg = Msg {
    name: "FileData",
    fields: &[Field("mime_type", Kind::Str), Field("file_uri", Kind::Str)],
};

static FUNCTION_CALL: Msg = Msg {
    name: "FunctionCall",
    fields: &[
        Field("id", Kind::Str),
        Field("name", Kind::Str),
        Field("args", Kind::Any),
    ],
};

static FUNCTION_RESPONSE: Msg = Msg {
    name: "FunctionResponse",
    fields: &[
        Field("id", Kind::Str),
        Field("name", Kind::Str),
        Field("response", Kind::Any),
        Field("parts", Kind::Any),
        Field("will_continue", Kind::Bool),
        Field(
            "scheduling",
            Kind::Enum(
                "FunctionResponse.Scheduling",
                &["SCHEDULING_UNSPECIFIED", "SILENT", "WHEN_IDLE", "INTERRUPT"],
            ),
        ),
    ],
};

static TOOL: Msg = Msg {
    name: "Tool",
    fields: &[
        Field(
            "function_declarations",
            Kind::List(&Kind::Msg(&FUNCTION_DECLARATION)),
        ),
        Field("google_search_retrieval", Kind::Any),
        Field("code_execution", Kind::Any),
        Field("google_search", Kind::Any),
        Field("url_context", Kind::Any),
        Field("computer_use", Kind::Any),
        Field("file_search", Kind::Any),
        Field("google_maps", Kind::Any),
    ],
};

static FUNCTION_DECLARATION: Msg = Msg {
    name: "FunctionDeclaration",
    fields: &[
        Field("name", Kind::Str),
        Field("description", Kind::Str),
        Field(
            "behavior",
            Kind::Enum(
                "FunctionDeclaration.Behavior",
                &["UNSPECIFIED", "BLOCKING", "NON_BLOCKING"],
            ),
        ),
        Field("parameters", Kind::Msg(&SCHEMA)),
        Field("parameters_json_schema", Kind::Any),
        Field("response", Kind::Msg(&SCHEMA)),
        Field("response_json_schema", Kind::Any),
    ],
};

/// Gemini's OpenAPI subset. Unknown keywords (`const`, `additionalProperties`, `$ref`…) are
/// refused here as Google refuses them: the classic bug of a gateway passing an OpenAI JSON
/// Schema through unchanged.
static SCHEMA: Msg = Msg {
    name: "Schema",
    fields: &[
        Field(
            "type",
            Kind::Enum(
                "Type",
                &[
                    "TYPE_UNSPECIFIED",
                    "STRING",
                    "NUMBER",
                    "INTEGER",
                    "BOOLEAN",
                    "ARRAY",
                    "OBJECT",
                    "NULL",
                ],
            ),
        ),
        Field("format", Kind::Str),
        Field("title", Kind::Str),
        Field("description", Kind::Str),
        Field("nullable", Kind::Bool),
        Field("enum", Kind::List(&Kind::Str)),
        Field("max_items", Kind::Int),
        Field("min_items", Kind::Int),
        Field("properties", Kind::Map(&Kind::Msg(&SCHEMA))),
        Field("required", Kind::List(&Kind::Str)),
        Field("min_properties", Kind::Int),
        Field("max_properties", Kind::Int),
        Field("min_length", Kind::Int),
        Field("max_length", Kind::Int),
        Field("pattern", Kind::Str),
        Field("example", Kind::Any),
        Field("any_of", Kind::List(&Kind::Msg(&SCHEMA))),
        Field("property_ordering", Kind::List(&Kind::Str)),
        Field("default", Kind::Any),
        Field("items", Kind::Msg(&SCHEMA)),
        Field("minimum", Kind::Float),
        Field("maximum", Kind::Float),
    ],
};

static TOOL_CONFIG: Msg = Msg {
    name: "ToolConfig",
    fields: &[
        Field(
            "function_calling_config",
            Kind::Msg(&FUNCTION_CALLING_CONFIG),
        ),
        Field("retrieval_config", Kind::Any),
    ],
};

static FUNCTION_CALLING_CONFIG: Msg = Msg {
    name: "FunctionCallingConfig",
    fields: &[
        Field(
            "mode",
            Kind::Enum(
                "FunctionCallingConfig.Mode",
                &["MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"],
            ),
        ),
        Field("allowed_function_names", Kind::List(&Kind::Str)),
    ],
};

static SAFETY_SETTING: Msg = Msg {
    name: "SafetySetting",
    fields: &[
        Field(
            "category",
            Kind::Enum(
                "HarmCategory",
                &[
                    "HARM_CATEGORY_UNSPECIFIED",
                    "HARM_CATEGORY_HARASSMENT",
                    "HARM_CATEGORY_HATE_SPEECH",
                    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
                    "HARM_CATEGORY_DANGEROUS_CONTENT",
                    "HARM_CATEGORY_CIVIC_INTEGRITY",
                ],
            ),
        ),
        Field(
            "threshold",
            Kind::Enum(
                "SafetySetting.HarmBlockThreshold",
                &[
                    "HARM_BLOCK_THRESHOLD_UNSPECIFIED",
                    "BLOCK_LOW_AND_ABOVE",
                    "BLOCK_MEDIUM_AND_ABOVE",
                    "BLOCK_ONLY_HIGH",
                    "BLOCK_NONE",
                    "OFF",
                ],
            ),
        ),
    ],
};

static GENERATION_CONFIG: Msg = Msg {
    name: "GenerationConfig",
    fields: &[
        Field("candidate_count", Kind::Int),
        Field("stop_sequences", Kind::List(&Kind::Str)),
        Field("max_output_tokens", Kind::Int),
        Field("temperature", Kind::Float),
        Field("top_p", Kind::Float),
        Field("top_k", Kind::Int),
        Field("seed", Kind::Int),
        Field("presence_penalty", Kind::Float),
        Field("frequency_penalty", Kind::Float),
        Field("response_logprobs", Kind::Bool),
        Field("logprobs", Kind::Int),
        Field("enable_enhanced_civic_answers", Kind::Bool),
        Field("response_mime_type", Kind::Str),
        Field("response_schema", Kind::Msg(&SCHEMA)),
        Field("response_json_schema", Kind::Any),
        Field(
            "response_modalities",
            Kind::List(&Kind::Enum(
                "GenerationConfig.Modality",
                &["MODALITY_UNSPECIFIED", "TEXT", "IMAGE", "AUDIO"],
            )),
        ),
        Field("speech_config", Kind::Any),
        Field("thinking_config", Kind::Msg(&THINKING_CONFIG)),
        Field("image_config", Kind::Any),
        Field(
            "media_resolution",
            Kind::Enum(
                "GenerationConfig.MediaResolution",
                &[
                    "MEDIA_RESOLUTION_UNSPECIFIED",
                    "MEDIA_RESOLUTION_LOW",
                    "MEDIA_RESOLUTION_MEDIUM",
                    "MEDIA_RESOLUTION_HIGH",
                ],
            ),
        ),
    ],
};

static THINKING_CONFIG: Msg = Msg {
    name: "ThinkingConfig",
    fields: &[
        Field("include_thoughts", Kind::Bool),
        Field("thinking_budget", Kind::Int),
        Field(
            "thinking_level",
            Kind::Enum(
                "ThinkingConfig.ThinkingLevel",
                &[
                    "THINKING_LEVEL_UNSPECIFIED",
                    "MINIMAL",
                    "LOW",
                    "MEDIUM",
                    "HIGH",
                ],
            ),
        ),
    ],
};

/// The MIME types `responseMimeType` accepts.
const MIME_TYPES: [&str; 5] = [
    "text/plain",
    "application/json",
    "application/xml",
    "application/yaml",
    "text/x.enum",
];

/// Whether `key` is the proto field `snake` in either JSON spelling: `max_output_tokens` or
/// `maxOutputTokens`. Compared in place, so the walk allocates nothing per field.
fn is_field(key: &str, snake: &str) -> bool {
    if key == snake {
        return true;
    }
    let mut want = snake.bytes();
    let mut got = key.bytes();
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(b'_'), Some(g)) => match want.next() {
                Some(w) if g == w.to_ascii_uppercase() && w.is_ascii_lowercase() => {}
                _ => return false,
            },
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// The member `snake` of a request object, in either spelling.
fn get<'a>(object: &'a Map<String, Value>, snake: &str) -> Option<&'a Value> {
    object
        .iter()
        .find(|(key, _)| is_field(key, snake))
        .map(|(_, value)| value)
}

fn get_str<'a>(object: &'a Map<String, Value>, snake: &str) -> Option<&'a str> {
    get(object, snake).and_then(Value::as_str)
}

fn get_list<'a>(object: &'a Map<String, Value>, snake: &str) -> &'a [Value] {
    get(object, snake)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// An integer as proto-JSON reads it: a JSON integer or a string holding one.
fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Problems the walk found: unknown names (Google lists them all) and bad values.
#[derive(Default)]
struct Violations {
    list: Vec<(String, String)>,
}

impl Violations {
    fn unknown(&mut self, path: &str, name: &str) {
        let description = if path.is_empty() {
            format!("Invalid JSON payload received. Unknown name \"{name}\": Cannot find field.")
        } else {
            format!(
                "Invalid JSON payload received. Unknown name \"{name}\" at '{path}': Cannot find \
                 field."
            )
        };
        self.list.push((path.to_owned(), description));
    }

    fn bad_value(&mut self, path: &str, kind: &str, value: &Value) {
        let shown = match value {
            Value::String(s) => format!("\"{s}\""),
            other => other.to_string(),
        };
        let description = format!("Invalid value at '{path}' ({kind}), {shown}");
        self.list.push((path.to_owned(), description));
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Checks `object` against `msg`, recursively, recording every unknown name and bad value.
/// Paths use the proto names (`contents[0].parts[1].function_call`), as Google prints them.
fn walk(msg: &Msg, object: &Map<String, Value>, path: &str, out: &mut Violations) {
    for (key, value) in object {
        let Some(field) = msg.fields.iter().find(|f| is_field(key, f.0)) else {
            out.unknown(path, key);
            continue;
        };
        walk_value(&field.1, value, &join(path, field.0), out);
    }
}

fn walk_value(kind: &Kind, value: &Value, path: &str, out: &mut Violations) {
    if value.is_null() {
        return;
    }
    match kind {
        Kind::Any => {}
        Kind::Str => {
            if !value.is_string() {
                out.bad_value(path, "TYPE_STRING", value);
            }
        }
        Kind::Bytes => {
            // Proto-JSON takes standard or URL-safe base64, padded or not; checking the
            // alphabet catches what a gateway gets wrong (raw bytes, a data: URL) without
            // decoding an image on every request.
            let ok = value.as_str().is_some_and(|s| {
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/-_=".contains(&b))
            });
            if !ok {
                out.bad_value(path, "TYPE_BYTES", value);
            }
        }
        Kind::Bool => {
            if !value.is_boolean() {
                out.bad_value(path, "TYPE_BOOL", value);
            }
        }
        Kind::Int => {
            if int_of(value).is_none() {
                out.bad_value(path, "TYPE_INT32", value);
            }
        }
        Kind::Float => {
            let ok = value.is_number() || value.as_str().is_some_and(|s| s.parse::<f64>().is_ok());
            if !ok {
                out.bad_value(path, "TYPE_FLOAT", value);
            }
        }
        Kind::Enum(name, values) => {
            // The Schema `type` is matched without case: Google's own examples send
            // "object" and "string" there.
            let ok = value.as_str().is_some_and(|s| {
                values.contains(&s)
                    || (*name == "Type" && values.iter().any(|v| v.eq_ignore_ascii_case(s)))
            });
            if !ok {
                out.bad_value(path, &format!("{PREFIX}{name}"), value);
            }
        }
        Kind::Msg(msg) => match value.as_object() {
            Some(object) => walk(msg, object, path, out),
            None => out.bad_value(path, &format!("{PREFIX}{}", msg.name), value),
        },
        Kind::List(inner) => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk_value(inner, item, &format!("{path}[{i}]"), out);
                }
            }
            None => out.bad_value(path, "TYPE_MESSAGE", value),
        },
        Kind::Map(inner) => match value.as_object() {
            Some(entries) => {
                for (key, item) in entries {
                    walk_value(inner, item, &format!("{path}[{key}].value"), out);
                }
            }
            None => out.bad_value(path, "TYPE_MESSAGE", value),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Errors: Google's shape, one place.
// ---------------------------------------------------------------------------------------------

/// A Google API error: `{"error":{"code","message","status","details"}}`.
#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    message: String,
    details: Vec<Value>,
}

impl ApiError {
    fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// A 400 INVALID_ARGUMENT.
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A request-level check, worded as Google words them:
    /// `* GenerateContentRequest.<field>: <reason>\n`.
    fn request(field: &str, reason: &str) -> Self {
        Self::invalid(format!("* GenerateContentRequest.{field}: {reason}\n"))
    }

    fn detail(mut self, detail: Value) -> Self {
        self.details.push(detail);
        self
    }

    /// The canonical status name Google pairs with each HTTP status.
    fn status_name(&self) -> &'static str {
        match self.code.as_u16() {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            409 => "ABORTED",
            412 => "FAILED_PRECONDITION",
            429 => "RESOURCE_EXHAUSTED",
            499 => "CANCELLED",
            500 => "INTERNAL",
            501 => "NOT_IMPLEMENTED",
            503 => "UNAVAILABLE",
            504 => "DEADLINE_EXCEEDED",
            _ => "UNKNOWN",
        }
    }

    fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorObject {
                code: self.code.as_u16(),
                message: &self.message,
                status: self.status_name(),
                details: (!self.details.is_empty()).then_some(&self.details),
            },
        }
    }

    fn respond(&self) -> HttpResponse {
        // Google pretty-prints its error bodies; clients must not assume one line.
        let body = serde_json::to_vec_pretty(&self.body()).unwrap_or_default();
        builder(self.code, JSON).body(body)
    }

    /// The answer to a `status=` fault, in the shape Google uses for that status. 429 carries
    /// Google's own retry hint, a `RetryInfo` detail; Google sends no `Retry-After` header.
    fn emulated(status: u16, retry_after: Option<u64>) -> Self {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match status {
            429 => {
                let secs = retry_after.unwrap_or(1);
                Self::new(
                    code,
                    "You exceeded your current quota, please check your plan and billing \
                     details. For more information on this error, head to: \
                     https://ai.google.dev/gemini-api/docs/rate-limits. (emulated fault)",
                )
                .detail(serde_json::json!({
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    }]
                }))
                .detail(serde_json::json!({
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": format!("{secs}s"),
                }))
            }
            400 => Self::new(
                code,
                "Request contains an invalid argument. (emulated fault)",
            ),
            403 => Self::new(
                code,
                "The caller does not have permission. (emulated fault)",
            ),
            404 => Self::new(code, "Requested entity was not found. (emulated fault)"),
            500 => Self::new(
                code,
                "An internal error has occurred. Please retry or report in \
                 https://developers.generativeai.google/guide/troubleshooting (emulated fault)",
            ),
            503 => Self::new(
                code,
                "The model is overloaded. Please try again later. (emulated fault)",
            ),
            504 => Self::new(
                code,
                "Deadline expired before operation could complete. (emulated fault)",
            ),
            _ => Self::new(code, format!("Emulated fault: HTTP {status}.")),
        }
    }
}

/// The mid-stream fault: a 500 INTERNAL error object where the next chunk would be.
fn midstream_error() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "An internal error has occurred. Please retry or report in \
         https://developers.generativeai.google/guide/troubleshooting (emulated mid-stream fault)",
    )
}

fn fault_spec_error(source: FaultSource, e: &FaultSpecError) -> ApiError {
    ApiError::invalid(format!("Invalid emulator fault spec in {source}: {e}."))
}

fn builder(status: StatusCode, content_type: &'static str) -> HttpResponseBuilder {
    let mut builder = HttpResponse::build(status);
    builder
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::VARY, "Origin, X-Origin, Referer"))
        .insert_header((header::SERVER, "scaffolding on HTTPServer2"));
    builder
}

// ---------------------------------------------------------------------------------------------
// State and routes.
// ---------------------------------------------------------------------------------------------

/// What the Gemini endpoints share across workers.
pub(super) struct GeminiState {
    api_key: String,
}

impl GeminiState {
    pub(super) fn new(api_key: String) -> Self {
        Self { api_key }
    }
}

/// Registers the Gemini routes (relative, so `mod.rs` can mount them under the fault prefix).
pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1beta/models/{call}")
            .route(web::post().to(generate))
            .default_service(web::to(not_found)),
    );
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Method not found: {} {}", req.method(), req.path()),
    )
    .respond()
}

/// Which of the two methods the path names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Generate,
    Stream { sse: bool },
}

async fn generate(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    match answer(&req, payload, &state).await {
        Ok(response) => response,
        Err(e) => e.respond(),
    }
}

/// Key, query, path, body, faults, validation, answer: in Google's order (a bad key is
/// reported before anything about the request).
async fn answer(
    req: &HttpRequest,
    payload: web::Payload,
    state: &State,
) -> Result<HttpResponse, ApiError> {
    let (query_key, alt) = check_query(req.query_string())?;
    authenticate(req, query_key.as_deref(), &state.gemini.api_key)?;
    let call = req.match_info().get("call").unwrap_or_default();
    let (model, method) = match call.rsplit_once(':') {
        Some((model, "generateContent")) => (model, Method::Generate),
        Some((model, "streamGenerateContent")) => (
            model,
            Method::Stream {
                sse: alt.as_deref() == Some("sse"),
            },
        ),
        _ => return Err(not_found_method(req)),
    };
    if !(model.starts_with("gemini-") || model.starts_with("gemma-")) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "models/{model} is not found for API version v1beta, or is not supported for \
                 generateContent. Call ListModels to see the list of available models and their \
                 supported methods."
            ),
        ));
    }
    let body = exchange::read_body(payload).await.map_err(|e| match e {
        BodyError::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request payload size exceeds the limit: {MAX_BODY} bytes."),
        ),
        BodyError::Broken(reason) => {
            ApiError::invalid(format!("Invalid JSON payload received. {reason}"))
        }
    })?;
    let fault = exchange::resolve_faults(req, &body, &state.faults)
        .await
        .map_err(|(source, e)| fault_spec_error(source, &e))?;
    if let Some(status) = fault.status {
        return Err(ApiError::emulated(status, fault.retry_after));
    }
    let root = parse(&body)?;
    let plan = validate(&root, model)?;
    if memchr::memmem::find(&body, BLOCKED_MARKER).is_some() {
        return blocked(&plan, &fault, method);
    }
    let reply = Reply::plan(words(&fault), plan.json, plan.tool, plan.limit);
    let response = Answer::new(&plan, &reply);
    match method {
        Method::Generate => {
            let json = serde_json::to_vec(&response.whole()).map_err(internal)?;
            Ok(exchange::whole(builder(StatusCode::OK, JSON), &fault, json))
        }
        Method::Stream { sse } => {
            let frames = response.stream(&fault, sse)?;
            let content_type = if sse { SSE } else { JSON };
            Ok(exchange::stream(
                builder(StatusCode::OK, content_type),
                &fault,
                frames,
            ))
        }
    }
}

/// The answer to a prompt the safety filter blocks: no candidate, a `promptFeedback` with the
/// block reason, the prompt's usage; for a stream, that object as its one event. (The shape
/// follows the SDK's types; `providers.md` §11 notes the exact payload is not verified.)
fn blocked(plan: &Plan<'_>, fault: &Active, method: Method) -> Result<HttpResponse, ApiError> {
    let response_id = response_id();
    let body = BlockedResponse {
        prompt_feedback: PromptFeedback {
            block_reason: "SAFETY",
            safety_ratings: [SafetyRating {
                category: "HARM_CATEGORY_DANGEROUS_CONTENT",
                probability: "HIGH",
                blocked: true,
            }],
        },
        usage_metadata: BlockedUsage {
            prompt_token_count: plan.prompt_tokens,
            total_token_count: plan.prompt_tokens,
        },
        model_version: plan.model,
        response_id: &response_id,
    };
    let json = serde_json::to_vec(&body).map_err(internal)?;
    match method {
        Method::Generate => Ok(exchange::whole(builder(StatusCode::OK, JSON), fault, json)),
        Method::Stream { sse } => {
            let mut frames = vec![frame(json, sse, true)];
            if !sse {
                frames.push(Bytes::from_static(b"]"));
            }
            let content_type = if sse { SSE } else { JSON };
            Ok(exchange::stream(
                builder(StatusCode::OK, content_type),
                fault,
                frames,
            ))
        }
    }
}

fn not_found_method(req: &HttpRequest) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Method not found: {} {}", req.method(), req.path()),
    )
}

/// The query string: `key` and `alt` (`json` or `sse`) are the only parameters the emulator
/// binds; others are refused the way Google refuses an unbindable query parameter.
fn check_query(query: &str) -> Result<(Option<String>, Option<String>), ApiError> {
    let mut key = None;
    let mut alt = None;
    for (name, value) in form_pairs(query) {
        match name.as_str() {
            "key" => key = Some(value),
            "alt" | "$alt" => {
                if value != "json" && value != "sse" {
                    return Err(ApiError::invalid(format!(
                        "Invalid value at 'alt' (type.googleapis.com/google.api.Alt), \"{value}\""
                    )));
                }
                alt = Some(value);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "Invalid JSON payload received. Unknown name \"{other}\": Cannot bind query \
                     parameter. Field '{other}' could not be found in request message."
                )));
            }
        }
    }
    Ok((key, alt))
}

/// `a=b&c=d` with percent-decoding; the emulator only reads two short parameters.
fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (
            exchange::percent_decode(name, true),
            exchange::percent_decode(value, true),
        )
    })
}

/// `x-goog-api-key` (what the SDK sends) or `?key=`. No key: 403 PERMISSION_DENIED; a wrong
/// key: 400 INVALID_ARGUMENT with `API_KEY_INVALID`, not a 401, exactly as Google answers.
fn authenticate(req: &HttpRequest, query_key: Option<&str>, api_key: &str) -> Result<(), ApiError> {
    let header = req
        .headers()
        .get("x-goog-api-key")
        .map(HeaderValue::as_bytes)
        .map(String::from_utf8_lossy);
    let Some(key) = header.as_deref().or(query_key) else {
        return Err(
            ApiError::new(StatusCode::FORBIDDEN, MISSING_KEY).detail(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "CONSUMER_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}
            })),
        );
    };
    if key == api_key {
        return Ok(());
    }
    Err(ApiError::invalid(BAD_KEY)
        .detail(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"}
        }))
        .detail(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": "en-US",
            "message": BAD_KEY
        })))
}

fn parse(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::invalid(format!(
            "Invalid JSON payload received. Expected an object, got {other}."
        ))),
        Err(e) => Err(ApiError::invalid(format!(
            "Invalid JSON payload received. {e}."
        ))),
    }
}

fn internal(e: serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("An internal error has occurred. (emulator: {e})"),
    )
}

// ---------------------------------------------------------------------------------------------
// Validation: from the checked JSON to what the answer needs.
// ---------------------------------------------------------------------------------------------

/// A validated request, reduced to what the answer needs.
struct Plan<'a> {
    model: &'a str,
    candidates: u32,
    limit: Option<u64>,
    json: bool,
    tool: Option<FnTool<'a>>,
    prompt_tokens: u64,
    cached_tokens: u64,
    /// Thinking tokens spent, and whether the thought summary is shown.
    thoughts: u64,
    include_thoughts: bool,
    /// `gemini-3` models sign their function calls.
    signs_calls: bool,
}

fn validate<'a>(root: &'a Map<String, Value>, model: &'a str) -> Result<Plan<'a>, ApiError> {
    let mut violations = Violations::default();
    walk(&REQUEST, root, "", &mut violations);
    if !violations.list.is_empty() {
        let message: Vec<&str> = violations.list.iter().map(|(_, d)| d.as_str()).collect();
        let field_violations: Vec<Value> = violations
            .list
            .iter()
            .map(|(field, description)| {
                let mut v = serde_json::json!({ "description": description });
                if !field.is_empty() {
                    v["field"] = Value::String(field.clone());
                }
                v
            })
            .collect();
        return Err(
            ApiError::invalid(message.join("\n")).detail(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": field_violations,
            })),
        );
    }
    let signs_calls = model.starts_with("gemini-3");
    let contents = get_list(root, "contents");
    if contents.is_empty() {
        return Err(ApiError::request("contents", "contents is not specified"));
    }
    let mut stats = TextStats::default();
    if let Some(system) = get(root, "system_instruction").and_then(Value::as_object) {
        for (j, part) in get_list(system, "parts").iter().enumerate() {
            let part = part.as_object().map_or(&*EMPTY, |p| p);
            check_part(part, &format!("system_instruction.parts[{j}]"), &mut stats)?;
        }
        stats.messages += 1;
    }
    let last_is_user = check_turns(contents, signs_calls, &mut stats)?;

    let declared = check_tools(root)?;
    let choice = check_tool_config(root, &declared)?;
    let tool = pick_tool(&declared, choice, last_is_user).map_err(|name| {
        ApiError::request(
            "tool_config.function_calling_config.allowed_function_names",
            &format!("function '{name}' is not declared in tools"),
        )
    })?;

    let config = get(root, "generation_config").and_then(Value::as_object);
    let setting = |snake: &str| config.and_then(|c| get(c, snake));
    let candidates = match setting("candidate_count").and_then(int_of) {
        None => 1,
        Some(n @ 1..=8) => u32::try_from(n).unwrap_or(1),
        Some(_) => {
            return Err(ApiError::request(
                "generation_config.candidate_count",
                "must be between 1 and 8",
            ));
        }
    };
    let limit = match setting("max_output_tokens").and_then(int_of) {
        None => None,
        Some(n) if n >= 1 => u64::try_from(n).ok(),
        Some(_) => {
            return Err(ApiError::request(
                "generation_config.max_output_tokens",
                "max_output_tokens must be positive.",
            ));
        }
    };
    let mime = setting("response_mime_type").and_then(Value::as_str);
    if let Some(mime) = mime.filter(|m| !MIME_TYPES.contains(m)) {
        return Err(ApiError::request(
            "generation_config.response_mime_type",
            &format!(
                "allowed mimetypes are `text/plain`, `application/json`, `application/xml`, \
                 `application/yaml` and `text/x.enum`, got `{mime}`."
            ),
        ));
    }
    let has_schema = setting("response_schema").is_some_and(|v| !v.is_null())
        || setting("response_json_schema").is_some_and(|v| !v.is_null());
    if has_schema && !matches!(mime, Some("application/json" | "text/x.enum")) {
        return Err(ApiError::request(
            "generation_config.response_mime_type",
            "When response_schema or response_json_schema is set, response_mime_type must be \
             application/json or text/x.enum.",
        ));
    }
    if setting("response_schema").is_some_and(|v| !v.is_null())
        && setting("response_json_schema").is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::request(
            "generation_config.response_schema",
            "response_schema and response_json_schema cannot both be set.",
        ));
    }
    let thinking = setting("thinking_config").and_then(Value::as_object);
    let budget = thinking
        .and_then(|t| get(t, "thinking_budget"))
        .and_then(int_of);
    let level = thinking.and_then(|t| get_str(t, "thinking_level"));
    let thinks = signs_calls || level.is_some() || budget.is_some_and(|b| b != 0);
    let include_thoughts = thinks
        && thinking
            .and_then(|t| get(t, "include_thoughts"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
    let cached_tokens = match get_str(root, "cached_content") {
        None => 0,
        Some(name) if name.starts_with("cachedContents/") && name.len() > 15 => CACHED_TOKENS,
        Some(name) => {
            return Err(ApiError::request(
                "cached_content",
                &format!("'{name}' is not a valid resource name: expected cachedContents/{{id}}."),
            ));
        }
    };

    Ok(Plan {
        model,
        candidates,
        limit,
        json: mime == Some("application/json"),
        tool,
        prompt_tokens: stats.prompt_tokens().saturating_add(cached_tokens),
        cached_tokens,
        thoughts: if thinks { THOUGHT_TOKENS } else { 0 },
        include_thoughts,
        signs_calls,
    })
}

static EMPTY: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

/// Roles and the function-calling turn protocol, with Google's messages: a model turn with
/// function calls must come right after a user turn or a function-response turn, and be
/// answered by the next turn with exactly one function response per call. Returns whether the
/// conversation ends with the user speaking (not with function results).
fn check_turns(
    contents: &[Value],
    signs_calls: bool,
    stats: &mut TextStats,
) -> Result<bool, ApiError> {
    // Calls of the previous turn, still to be answered by this one.
    let mut open_calls = 0_usize;
    let mut previous = Turn::None;
    for (i, content) in contents.iter().enumerate() {
        let content = content.as_object().map_or(&*EMPTY, |c| c);
        let role = get_str(content, "role").unwrap_or("user");
        if role != "user" && role != "model" {
            return Err(ApiError::invalid("Please use a valid role: user, model."));
        }
        let parts = get_list(content, "parts");
        if parts.is_empty() {
            return Err(ApiError::request(
                &format!("contents[{i}].parts"),
                "contents.parts must not be empty.",
            ));
        }
        let mut calls = 0_usize;
        let mut responses = 0_usize;
        let mut first_call_signed = None;
        for (j, part) in parts.iter().enumerate() {
            let part = part.as_object().map_or(&*EMPTY, |p| p);
            match check_part(part, &format!("contents[{i}].parts[{j}]"), stats)? {
                "function_call" => {
                    if first_call_signed.is_none() {
                        first_call_signed = Some(get(part, "thought_signature").is_some());
                    }
                    calls += 1;
                }
                "function_response" => responses += 1,
                _ => {}
            }
        }
        if responses > 0 && role == "model" {
            return Err(ApiError::invalid(
                "Please ensure that function response turn comes immediately after a function \
                 call turn. And the function response turn must be a user turn.",
            ));
        }
        if responses > 0 && previous != Turn::Calls {
            return Err(ApiError::invalid(
                "Please ensure that function response turn comes immediately after a function \
                 call turn.",
            ));
        }
        if open_calls > 0 && responses != open_calls {
            return Err(ApiError::invalid(
                "Please ensure that the number of function response parts is equal to the \
                 number of function call parts of the function call turn.",
            ));
        }
        if calls > 0 {
            if role != "model" {
                return Err(ApiError::invalid(
                    "Please ensure that function call turns are model turns.",
                ));
            }
            if !matches!(previous, Turn::User | Turn::Responses) {
                return Err(ApiError::invalid(
                    "Please ensure that function call turn comes immediately after a user turn \
                     or after a function response turn.",
                ));
            }
            if signs_calls && first_call_signed == Some(false) {
                return Err(ApiError::invalid(format!(
                    "Function call is missing a thought_signature in functionCall parts. This \
                     is required for tools to work correctly, and missing thought_signature may \
                     lead to degraded model performance. Additional data, function call \
                     position {i}. Please refer to \
                     https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
                )));
            }
        }
        open_calls = calls;
        previous = match (role, calls, responses) {
            (_, c, _) if c > 0 => Turn::Calls,
            (_, _, r) if r > 0 => Turn::Responses,
            ("user", _, _) => Turn::User,
            _ => Turn::Model,
        };
        // Each function response counts as a message, as each tool message does on OpenAI:
        // Gemini must answer parallel calls in one turn where chat sends one message each.
        stats.messages += responses.max(1);
    }
    if open_calls > 0 {
        return Err(ApiError::invalid(
            "Please ensure that the number of function response parts is equal to the number \
             of function call parts of the function call turn.",
        ));
    }
    Ok(previous == Turn::User)
}

/// What the previous turn was, for the function-calling order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    None,
    User,
    Model,
    Calls,
    Responses,
}

/// A part must set exactly one member of its `data` oneof. Returns that member's proto name.
fn check_part(
    part: &Map<String, Value>,
    at: &str,
    stats: &mut TextStats,
) -> Result<&'static str, ApiError> {
    let set: Vec<&'static str> = PART_DATA
        .iter()
        .copied()
        .filter(|name| get(part, name).is_some_and(|v| !v.is_null()))
        .collect();
    let member = match set.as_slice() {
        [one] => *one,
        [] => {
            return Err(ApiError::request(
                &format!("{at}.data"),
                "required oneof field 'data' must have one initialized field",
            ));
        }
        [first, second, ..] => {
            return Err(ApiError::invalid(format!(
                "Invalid JSON payload received. Oneof field 'data' is already set. Cannot set \
                 '{second}' at '{at}' (already set: '{first}')."
            )));
        }
    };
    match member {
        "text" => stats.add(get_str(part, "text").unwrap_or_default()),
        "inline_data" | "file_data" => {
            let data = get(part, member)
                .and_then(Value::as_object)
                .map_or(&*EMPTY, |d| d);
            if get_str(data, "mime_type").is_none_or(str::is_empty) {
                return Err(ApiError::request(
                    &format!("{at}.{member}.mime_type"),
                    "mime_type must be specified.",
                ));
            }
        }
        "function_call" | "function_response" => {
            let call = get(part, member)
                .and_then(Value::as_object)
                .map_or(&*EMPTY, |c| c);
            let name = get_str(call, "name").unwrap_or_default();
            if name.is_empty() {
                return Err(ApiError::request(
                    &format!("{at}.{member}.name"),
                    "Name cannot be empty.",
                ));
            }
            // Like the other providers' emulators, only the arguments and the result count
            // toward the prompt, not the function's name: the same conversation is the same
            // prompt on every provider (the conformance table checks it).
            if let Some(args) = get(
                call,
                if member == "function_call" {
                    "args"
                } else {
                    "response"
                },
            ) {
                if !args.is_object() {
                    return Err(ApiError::invalid(format!(
                        "Invalid value at '{at}.{member}' (type.googleapis.com/google.protobuf.\
                         Struct), {args}"
                    )));
                }
                stats.add(&args.to_string());
            }
        }
        _ => {}
    }
    Ok(member)
}

/// Function declarations: names as Gemini allows them. Returns the declared functions in
/// order.
fn check_tools(root: &Map<String, Value>) -> Result<Vec<FnTool<'_>>, ApiError> {
    let mut out = Vec::new();
    for (i, tool) in get_list(root, "tools").iter().enumerate() {
        let tool = tool.as_object().map_or(&*EMPTY, |t| t);
        for (j, declaration) in get_list(tool, "function_declarations").iter().enumerate() {
            let declaration = declaration.as_object().map_or(&*EMPTY, |d| d);
            let name = get_str(declaration, "name").unwrap_or_default();
            if !valid_function_name(name) {
                return Err(ApiError::request(
                    &format!("tools[{i}].function_declarations[{j}].name"),
                    "Invalid function name. Must start with a letter or an underscore. Must be \
                     a-z, A-Z, 0-9, or contain underscores, dots, colons and dashes, with a \
                     maximum length of 64.",
                ));
            }
            let parameters = get(declaration, "parameters")
                .filter(|p| !p.is_null())
                .or_else(|| get(declaration, "parameters_json_schema"));
            out.push(FnTool { name, parameters });
        }
    }
    Ok(out)
}

fn valid_function_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    first_ok && name.len() <= 64 && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// `toolConfig.functionCallingConfig` reduced to the shared tool choice: NONE never calls, ANY
/// with one allowed name calls that one, everything else calls the first declared function.
fn check_tool_config<'a>(
    root: &'a Map<String, Value>,
    declared: &[FnTool<'a>],
) -> Result<ToolChoice<'a>, ApiError> {
    let config = get(root, "tool_config")
        .and_then(Value::as_object)
        .and_then(|c| get(c, "function_calling_config"))
        .and_then(Value::as_object);
    let Some(config) = config else {
        return Ok(ToolChoice::Auto);
    };
    let mode = get_str(config, "mode").unwrap_or("AUTO");
    let allowed = get_list(config, "allowed_function_names");
    if !allowed.is_empty() && mode != "ANY" && mode != "VALIDATED" {
        return Err(ApiError::request(
            "tool_config.function_calling_config.allowed_function_names",
            "allowed_function_names may only be set when mode is ANY or VALIDATED.",
        ));
    }
    if mode != "NONE" && declared.is_empty() {
        if mode == "ANY" {
            return Err(ApiError::request(
                "tool_config.function_calling_config.mode",
                "Function calling mode `ANY` is only supported when tools with function \
                 declarations are provided.",
            ));
        }
        return Ok(ToolChoice::None);
    }
    Ok(match (mode, allowed.first().and_then(Value::as_str)) {
        ("NONE", _) => ToolChoice::None,
        (_, Some(name)) => ToolChoice::Named(name),
        _ => ToolChoice::Auto,
    })
}

// ---------------------------------------------------------------------------------------------
// The answer.
// ---------------------------------------------------------------------------------------------

/// Everything the response objects print, built once per request.
struct Answer<'a> {
    plan: &'a Plan<'a>,
    reply: &'a Reply<'a>,
    /// The tool call's arguments as a JSON object (Gemini sends `args` whole, not a string).
    args: Option<Value>,
    response_id: String,
}

impl<'a> Answer<'a> {
    fn new(plan: &'a Plan<'a>, reply: &'a Reply<'a>) -> Self {
        let args = match reply.body {
            Body::Tool { .. } => serde_json::from_str(&reply.content()).ok(),
            Body::Text => None,
        };
        Self {
            plan,
            reply,
            args,
            response_id: response_id(),
        }
    }

    fn finish_reason(&self) -> &'static str {
        // Gemini says STOP when it calls a function, too.
        if self.reply.truncated {
            "MAX_TOKENS"
        } else {
            "STOP"
        }
    }

    /// Usage after `output` output tokens: totals include the thoughts, which are not part of
    /// `candidatesTokenCount`.
    fn usage(&self, output: u64) -> UsageMetadata {
        let candidates = output.saturating_mul(u64::from(self.plan.candidates));
        UsageMetadata {
            prompt_token_count: self.plan.prompt_tokens,
            candidates_token_count: (candidates > 0).then_some(candidates),
            total_token_count: self
                .plan
                .prompt_tokens
                .saturating_add(candidates)
                .saturating_add(self.plan.thoughts),
            cached_content_token_count: (self.plan.cached_tokens > 0)
                .then_some(self.plan.cached_tokens),
            thoughts_token_count: (self.plan.thoughts > 0).then_some(self.plan.thoughts),
            prompt_tokens_details: [ModalityCount {
                modality: "TEXT",
                token_count: self.plan.prompt_tokens,
            }],
        }
    }

    /// The parts of the whole answer (or of one stream chunk holding `text`).
    fn parts(&self, text: Option<&'a str>, thought: bool, call: bool) -> Vec<Part<'_>> {
        let mut parts = Vec::with_capacity(2);
        if thought {
            parts.push(Part::text(THOUGHT_TEXT, true));
        }
        if let Some(text) = text {
            parts.push(Part::text(text, false));
        }
        if let (true, Body::Tool { name }, Some(args)) = (call, &self.reply.body, &self.args) {
            parts.push(Part {
                text: None,
                thought: None,
                function_call: Some(FunctionCallOut { name, args }),
                thought_signature: self.plan.signs_calls.then_some(THOUGHT_SIGNATURE),
            });
        }
        parts
    }

    fn response<'s>(
        &'s self,
        parts: &'s [Part<'s>],
        finish: Option<&'static str>,
        output: u64,
    ) -> GenerateContentResponse<'s> {
        let candidates = (0..self.plan.candidates)
            .map(|index| Candidate {
                content: CandidateContent {
                    parts: (!parts.is_empty()).then_some(parts),
                    role: "model",
                },
                finish_reason: finish,
                index,
            })
            .collect();
        GenerateContentResponse {
            candidates,
            usage_metadata: self.usage(output),
            model_version: self.plan.model,
            response_id: &self.response_id,
        }
    }

    fn whole(&'a self) -> WholeAnswer<'a> {
        let text = match self.reply.body {
            Body::Text => Some(self.reply.content()),
            Body::Tool { .. } => None,
        };
        WholeAnswer { answer: self, text }
    }

    /// The stream: one chunk per reply word (the thought summary rides on the first), a function
    /// call whole in one chunk, then a last chunk with `finishReason` and no parts, as captured
    /// Gemini streams end. `usageMetadata` on every chunk, with running output counts. SSE
    /// frames end in `\r\n\r\n`; the JSON-array form is `[`, chunks joined by `,\r\n`, `]`.
    fn stream(&self, fault: &Active, sse: bool) -> Result<Vec<Bytes>, ApiError> {
        let (pieces, fails) = self.reply.streamed(fault);
        let mut frames = Vec::with_capacity(pieces.len() + 3);
        let push = |frames: &mut Vec<Bytes>, json: Vec<u8>| {
            let first = frames.is_empty();
            frames.push(frame(json, sse, first));
        };
        let mut thought = self.plan.include_thoughts;
        match self.reply.body {
            Body::Text => {
                for (k, piece) in pieces.iter().enumerate() {
                    let parts = self.parts(Some(piece.as_ref()), thought, false);
                    thought = false;
                    let chunk = self.response(&parts, None, k as u64 + 1);
                    push(&mut frames, serde_json::to_vec(&chunk).map_err(internal)?);
                }
            }
            // Arguments are never cut in half on Gemini's wire: a fault inside them fails the
            // stream before the call.
            Body::Tool { .. } if !fails => {
                let parts = self.parts(None, thought, true);
                let chunk = self.response(&parts, None, self.reply.output_tokens());
                push(&mut frames, serde_json::to_vec(&chunk).map_err(internal)?);
            }
            Body::Tool { .. } => {}
        }
        if fails {
            let error = midstream_error();
            push(
                &mut frames,
                serde_json::to_vec(&error.body()).map_err(internal)?,
            );
        } else {
            let last = self.response(&[], Some(self.finish_reason()), self.reply.output_tokens());
            push(&mut frames, serde_json::to_vec(&last).map_err(internal)?);
        }
        if !sse {
            frames.push(Bytes::from_static(b"]"));
        }
        Ok(frames)
    }
}

/// One stream frame in either framing.
fn frame(json: Vec<u8>, sse: bool, first: bool) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 8);
    if sse {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&json);
        out.extend_from_slice(b"\r\n\r\n");
    } else {
        out.extend_from_slice(if first { b"[" } else { b",\r\n" });
        out.extend_from_slice(&json);
    }
    Bytes::from(out)
}

/// Google's response ids: 22 characters of URL-safe base64 alphabet.
fn response_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = String::with_capacity(22);
    for _ in 0..22 {
        let _ = id.write_char(char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]));
    }
    id
}

/// The non-streamed answer: all parts in one candidate.
struct WholeAnswer<'a> {
    answer: &'a Answer<'a>,
    text: Option<String>,
}

impl Serialize for WholeAnswer<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let answer = self.answer;
        let parts = answer.parts(self.text.as_deref(), answer.plan.include_thoughts, true);
        let output = answer.reply.output_tokens();
        answer
            .response(&parts, Some(answer.finish_reason()), output)
            .serialize(serializer)
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types (private), in Gemini's camelCase.
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    code: u16,
    message: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Vec<Value>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse<'a> {
    candidates: Vec<Candidate<'a>>,
    usage_metadata: UsageMetadata,
    model_version: &'a str,
    response_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    content: CandidateContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
    index: u32,
}

#[derive(Serialize)]
struct CandidateContent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<&'a [Part<'a>]>,
    role: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCallOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought_signature: Option<&'static str>,
}

impl<'a> Part<'a> {
    fn text(text: &'a str, thought: bool) -> Self {
        Self {
            text: Some(text),
            thought: thought.then_some(true),
            function_call: None,
            thought_signature: None,
        }
    }
}

#[derive(Serialize)]
struct FunctionCallOut<'a> {
    name: &'a str,
    args: &'a Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidates_token_count: Option<u64>,
    total_token_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_content_token_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thoughts_token_count: Option<u64>,
    prompt_tokens_details: [ModalityCount; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlockedResponse<'a> {
    prompt_feedback: PromptFeedback,
    usage_metadata: BlockedUsage,
    model_version: &'a str,
    response_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: &'static str,
    safety_ratings: [SafetyRating; 1],
}

#[derive(Serialize)]
struct SafetyRating {
    category: &'static str,
    probability: &'static str,
    blocked: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlockedUsage {
    prompt_token_count: u64,
    total_token_count: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModalityCount {
    modality: &'static str,
    token_count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_match_in_either_spelling() {
        assert!(is_field("max_output_tokens", "max_output_tokens"));
        assert!(is_field("maxOutputTokens", "max_output_tokens"));
        assert!(is_field("text", "text"));
        assert!(!is_field("maxoutputtokens", "max_output_tokens"));
        assert!(!is_field("max_outputTokens", "max_output_tokens"));
        assert!(!is_field("maxOutputToken", "max_output_tokens"));
        assert!(!is_field("maxOutputTokensX", "max_output_tokens"));
    }

    #[test]
    fn walk_lists_every_unknown_name_with_its_proto_path() {
        let body = serde_json::json!({
            "contents": [{"role": "user", "parts": [{"text": "hi", "bogus": 1}]}],
            "generationConfig": {"maxTokens": 5, "temperature": "hot"},
            "tools": [{"functionDeclarations": [{"name": "f", "parameters": {
                "type": "object",
                "properties": {"a": {"type": "string", "const": "x"}}
            }}]}],
            "thinking": true
        });
        let mut out = Violations::default();
        walk(&REQUEST, body.as_object().expect("object"), "", &mut out);
        let got: Vec<&str> = out.list.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(
            got,
            [
                "Invalid JSON payload received. Unknown name \"bogus\" at 'contents[0].parts[0]': \
                 Cannot find field.",
                "Invalid JSON payload received. Unknown name \"maxTokens\" at \
                 'generation_config': Cannot find field.",
                "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"",
                "Invalid JSON payload received. Unknown name \"thinking\": Cannot find field.",
                "Invalid JSON payload received. Unknown name \"const\" at \
                 'tools[0].function_declarations[0].parameters.properties[a].value': Cannot \
                 find field.",
            ]
        );
    }

    #[test]
    fn function_names_follow_gemini_rules() {
        assert!(valid_function_name("get_weather"));
        assert!(valid_function_name("_ns.tool:v1-x"));
        assert!(!valid_function_name("1tool"));
        assert!(!valid_function_name("get weather"));
        assert!(!valid_function_name(""));
        assert!(!valid_function_name(&"a".repeat(65)));
    }

    #[test]
    fn query_parameters_decode_and_unknown_ones_are_refused() {
        assert_eq!(
            check_query("alt=sse&key=AIza%2Bx").map_err(|e| e.message),
            Ok((Some("AIza+x".to_owned()), Some("sse".to_owned())))
        );
        let error = check_query("foo=1").err().map(|e| e.message);
        assert_eq!(
            error.as_deref(),
            Some(
                "Invalid JSON payload received. Unknown name \"foo\": Cannot bind query \
                 parameter. Field 'foo' could not be found in request message."
            )
        );
    }
}
