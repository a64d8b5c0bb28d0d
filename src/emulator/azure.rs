//! Azure OpenAI as the emulator serves it: the classic deployment URLs
//! (`/openai/deployments/{deployment}/chat/completions?api-version=…`, `…/responses`, and
//! `/openai/responses?api-version=…`) and the v1 API (`/openai/v1/chat/completions`,
//! `/openai/v1/responses`). This module owns what Azure does differently from OpenAI: the
//! `api-version` rules (missing: 404, unknown: 400), authentication (`api-key`, or
//! `Authorization: Bearer` with an Entra token, and on v1 also the key as a Bearer token), the
//! deployment → model-version table, Azure's own error bodies (string `code`s, the 429 wording
//! with `Retry-After`, the 400 `content_filter` refusal with its `innererror`), and the
//! content-filter annotations (the stream's first frame with empty `id` and `choices`,
//! `prompt_filter_results`, `content_filter_results` on choices). The request and answer
//! shapes themselves are OpenAI's, so validation and answers are `openai`'s one copy, run in
//! the Azure dialect.
//!
//! Content filtering is scripted by markers in the prompt: `[azure:content_filter]` makes the
//! prompt filter refuse the request (400, even for streams), `[azure:content_filter_output]`
//! makes the output filter cut the answer half way (`finish_reason: "content_filter"`).

use std::sync::LazyLock;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::State;
use super::exchange;
use super::openai::{
    self, Admitted, AzureAnnotations, AzureAnswer, Ctx, Dialect, fault_spec_error, read_body,
};

/// Dated inference API versions Azure OpenAI accepts on the classic URLs.
const API_VERSIONS: [&str; 16] = [
    "2024-02-01",
    "2024-06-01",
    "2024-10-21",
    "2024-02-15-preview",
    "2024-03-01-preview",
    "2024-04-01-preview",
    "2024-05-01-preview",
    "2024-07-01-preview",
    "2024-08-01-preview",
    "2024-09-01-preview",
    "2024-10-01-preview",
    "2024-12-01-preview",
    "2025-01-01-preview",
    "2025-02-01-preview",
    "2025-03-01-preview",
    "2025-04-01-preview",
];
/// The first version that has the Responses API.
const FIRST_RESPONSES_VERSION: &str = "2025-03-01-preview";
/// Deployments are named after their model (`gpt-4o`, `gpt-4o-prod`…); each runs this version.
/// Longer prefixes first, so `gpt-4o-mini` is not taken for `gpt-4o`.
const DEPLOYMENTS: [(&str, &str); 8] = [
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("gpt-4o", "gpt-4o-2024-11-20"),
    ("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"),
    ("gpt-4.1", "gpt-4.1-2025-04-14"),
    ("gpt-5-mini", "gpt-5-mini-2025-08-07"),
    ("gpt-5", "gpt-5-2025-08-07"),
    ("o3-mini", "o3-mini-2025-01-31"),
    ("o4-mini", "o4-mini-2025-04-16"),
];
const PROMPT_FILTER_MARKER: &[u8] = b"[azure:content_filter]";
const OUTPUT_FILTER_MARKER: &[u8] = b"[azure:content_filter_output]";

const MISSING_KEY: &str = "Access denied due to missing subscription key. Make sure to include \
    subscription key when making requests to an API.";
const BAD_KEY: &str = "Access denied due to invalid subscription key or wrong API endpoint. Make \
    sure to provide a valid key for an active subscription and use a correct regional API \
    endpoint for your resource.";
const BAD_TOKEN: &str = "Unauthorized. Access token is missing, invalid, audience is incorrect \
    (https://cognitiveservices.azure.com), or have expired.";
const FILTERED_PROMPT: &str = "The response was filtered due to the prompt triggering Azure \
    OpenAI's content management policy. Please modify your prompt and retry. To learn more about \
    our content filtering policies please read our documentation: \
    https://go.microsoft.com/fwlink/?linkid=2198766";

/// The verdict categories, all safe.
fn verdict(jailbreak: bool) -> Value {
    json!({
        "hate": {"filtered": false, "severity": "safe"},
        "jailbreak": {"filtered": jailbreak, "detected": jailbreak},
        "self_harm": {"filtered": false, "severity": "safe"},
        "sexual": {"filtered": false, "severity": "safe"},
        "violence": {"filtered": false, "severity": "safe"}
    })
}

/// Azure's annotations, built once.
static ANNOTATIONS: LazyLock<AzureAnnotations> = LazyLock::new(|| {
    let prompt_filter_results = json!([{
        "prompt_index": 0,
        "content_filter_results": verdict(false),
    }]);
    let frame = json!({
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": prompt_filter_results,
    });
    AzureAnnotations {
        safe: json!({
            "hate": {"filtered": false, "severity": "safe"},
            "self_harm": {"filtered": false, "severity": "safe"},
            "sexual": {"filtered": false, "severity": "safe"},
            "violence": {"filtered": false, "severity": "safe"}
        }),
        filtered: json!({
            "hate": {"filtered": false, "severity": "safe"},
            "self_harm": {"filtered": false, "severity": "safe"},
            "sexual": {"filtered": false, "severity": "safe"},
            "violence": {"filtered": true, "severity": "medium"}
        }),
        prompt_filter_results,
        filter_frame: Bytes::from(format!("data: {frame}\n\n")),
    }
});

// ---------------------------------------------------------------------------------------------
// Errors of Azure's front door.
// ---------------------------------------------------------------------------------------------

/// An Azure error body: `{"error":{"code": "<string>", "message", …}}`.
#[derive(Debug)]
struct AzureError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After` (429).
    retry_after: Option<u64>,
    /// The content-filter refusal carries OpenAI's fields plus `status` and `innererror`.
    filter: bool,
}

impl AzureError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            filter: false,
        }
    }

    fn respond(&self, ctx: &Ctx) -> HttpResponse {
        let innererror = self.filter.then(|| {
            json!({"code": "ResponsibleAIPolicyViolation", "content_filter_result": verdict(true)})
        });
        let body = ErrorBody {
            error: ErrorObject {
                code: self.code,
                message: &self.message,
                param: self.filter.then_some(Some("prompt")),
                kind: self.filter.then_some(None),
                status: self.filter.then_some(self.status.as_u16()),
                innererror: innererror.as_ref(),
            },
        };
        let mut builder = HttpResponse::build(self.status);
        builder
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header(("apim-request-id", ctx.request_id()));
        if let Some(secs) = self.retry_after {
            builder
                .insert_header((header::RETRY_AFTER, secs))
                .insert_header(("retry-after-ms", secs.saturating_mul(1000)))
                .insert_header(("x-ratelimit-remaining-requests", 0_u64))
                .insert_header(("x-ratelimit-remaining-tokens", 0_u64));
        }
        builder.body(serde_json::to_vec(&body).unwrap_or_default())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<Option<&'a str>>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    innererror: Option<&'a Value>,
}

// ---------------------------------------------------------------------------------------------
// State and routes.
// ---------------------------------------------------------------------------------------------

/// The credentials the Azure routes accept.
pub(super) struct AzureState {
    api_key: String,
    entra_token: String,
}

impl AzureState {
    pub(super) fn new(api_key: String, entra_token: String) -> Self {
        Self {
            api_key,
            entra_token,
        }
    }
}

/// Which operation, under which URL style.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `/openai/deployments/{d}/chat/completions?api-version=`
    ClassicChat,
    /// `/openai/deployments/{d}/responses?api-version=`
    ClassicDeploymentResponses,
    /// `/openai/responses?api-version=` (deployment in `model`)
    ClassicResponses,
    V1Chat,
    V1Responses,
}

impl Route {
    fn is_v1(self) -> bool {
        matches!(self, Route::V1Chat | Route::V1Responses)
    }

    fn is_chat(self) -> bool {
        matches!(self, Route::ClassicChat | Route::V1Chat)
    }

    /// Azure's operation name, as its 429 message quotes it.
    fn operation(self) -> &'static str {
        if self.is_chat() {
            "ChatCompletions_Create"
        } else {
            "Responses_Create"
        }
    }
}

/// Registers the Azure routes (relative, so `mod.rs` can mount them under the fault prefix).
pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    let route = |path: &str, route: Route| {
        web::resource(path)
            .route(web::post().to(
                move |req: HttpRequest, payload: web::Payload, state: web::Data<State>| {
                    serve(req, payload, state, route)
                },
            ))
            .default_service(web::to(not_found))
    };
    cfg.service(route(
        "/openai/deployments/{deployment}/chat/completions",
        Route::ClassicChat,
    ))
    .service(route(
        "/openai/deployments/{deployment}/responses",
        Route::ClassicDeploymentResponses,
    ))
    .service(route("/openai/responses", Route::ClassicResponses))
    .service(route("/openai/v1/chat/completions", Route::V1Chat))
    .service(route("/openai/v1/responses", Route::V1Responses));
    let retrieval = |path: &str, route: Route| {
        web::resource(path)
            .route(
                web::get().to(move |req: HttpRequest, state: web::Data<State>| {
                    retrieve(req, state, route)
                }),
            )
            .default_service(web::to(not_found))
    };
    cfg.service(retrieval("/openai/responses/{id}", Route::ClassicResponses))
        .service(retrieval("/openai/v1/responses/{id}", Route::V1Responses));
}

/// `GET /openai/responses/{id}?api-version=…` (or under `/openai/v1`): a stored response.
async fn retrieve(req: HttpRequest, state: web::Data<State>, route: Route) -> HttpResponse {
    let ctx = front_ctx();
    if let Err(e) = check_api_version(req.query_string(), route)
        .and_then(|_| authenticate(&req, route, &state.azure))
    {
        return e.respond(&ctx);
    }
    let id = req.match_info().get("id").unwrap_or_default();
    match openai::stored_response(&state.openai, id) {
        Some(json) => openai::json_answer(&ctx, json),
        None => AzureError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("Response with id '{id}' not found."),
        )
        .respond(&ctx),
    }
}

async fn not_found() -> HttpResponse {
    AzureError::new(StatusCode::NOT_FOUND, "404", "Resource not found").respond(&front_ctx())
}

/// The context of a request Azure has not resolved yet: Azure's headers, no model.
fn front_ctx() -> Ctx {
    Ctx::with(Dialect::Azure(AzureAnswer {
        model: "",
        filter_output: false,
        deployment_in_url: false,
        annotations: &ANNOTATIONS,
    }))
}

/// Just the `model` of a body, for v1 and classic-Responses requests, which name their
/// deployment there; everything else in the body is left to the OpenAI validation.
#[derive(Deserialize)]
struct ModelOnly {
    model: Option<String>,
}

async fn serve(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
    route: Route,
) -> HttpResponse {
    let ctx = front_ctx();
    match admit(&req, payload, &state, route, ctx).await {
        Ok(adm) if route.is_chat() => openai::chat_answer(&adm),
        Ok(adm) => openai::responses_answer(&adm, &state.openai),
        Err(response) => response,
    }
}

/// Azure's front door, in its order: URL and `api-version`, credentials, body, deployment,
/// faults, the prompt filter. What passes is answered by the OpenAI code in the Azure dialect.
async fn admit(
    req: &HttpRequest,
    payload: web::Payload,
    state: &State,
    route: Route,
    ctx: Ctx,
) -> Result<Admitted, HttpResponse> {
    let api_version = check_api_version(req.query_string(), route).map_err(|e| e.respond(&ctx))?;
    authenticate(req, route, &state.azure).map_err(|e| e.respond(&ctx))?;
    let body = read_body(payload).await.map_err(|e| e.respond(&ctx))?;
    let deployment_in_url = req.match_info().get("deployment").is_some();
    let deployment = match req.match_info().get("deployment") {
        Some(deployment) => Some(deployment.to_owned()),
        None => serde_json::from_slice::<ModelOnly>(&body)
            .ok()
            .and_then(|m| m.model),
    };
    // Without a deployment the OpenAI validation words the refusal (`model` is missing).
    let model = match deployment {
        Some(deployment) => model_version(&deployment).ok_or_else(|| {
            AzureError::new(
                StatusCode::NOT_FOUND,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the \
                 deployment within the last 5 minutes, please wait a moment and try again.",
            )
            .respond(&ctx)
        })?,
        None => "",
    };
    let fault = exchange::resolve_faults(req, &body, &state.faults)
        .await
        .map_err(|(source, e)| fault_spec_error(source, &e).respond(&ctx))?;
    if let Some(status) = fault.status {
        return Err(emulated(status, fault.retry_after, route, &api_version).respond(&ctx));
    }
    let finder = |marker: &[u8]| memchr::memmem::find(&body, marker).is_some();
    if finder(PROMPT_FILTER_MARKER) {
        let mut error = AzureError::new(StatusCode::BAD_REQUEST, "content_filter", FILTERED_PROMPT);
        error.filter = true;
        return Err(error.respond(&ctx));
    }
    let dialect = Dialect::Azure(AzureAnswer {
        model,
        filter_output: finder(OUTPUT_FILTER_MARKER),
        deployment_in_url,
        annotations: &ANNOTATIONS,
    });
    Ok(Admitted {
        ctx: ctx.into_dialect(dialect),
        body,
        fault,
    })
}

/// The deployment's model version, by the model its name starts with.
fn model_version(deployment: &str) -> Option<&'static str> {
    let lower = deployment.to_ascii_lowercase();
    DEPLOYMENTS
        .iter()
        .find(|(model, _)| lower.starts_with(model))
        .map(|(_, version)| *version)
}

/// Returns the version the request names (`v1` on the v1 API).
fn check_api_version(query: &str, route: Route) -> Result<String, AzureError> {
    let version = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "api-version")
        .map(|(_, value)| exchange::percent_decode(value, true));
    let unsupported = || {
        AzureError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "API version not supported",
        )
    };
    if route.is_v1() {
        return match version.as_deref() {
            None | Some("v1" | "preview" | "latest") => Ok("v1".to_owned()),
            Some(_) => Err(unsupported()),
        };
    }
    let Some(version) = version else {
        return Err(AzureError::new(
            StatusCode::NOT_FOUND,
            "404",
            "Resource not found",
        ));
    };
    if !API_VERSIONS.contains(&version.as_str()) {
        return Err(unsupported());
    }
    // Dated versions sort as text; previews after their date.
    if !route.is_chat() && version.as_str() < FIRST_RESPONSES_VERSION {
        return Err(AzureError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "Azure OpenAI Responses API is enabled only for api-version \
                 {FIRST_RESPONSES_VERSION} and later"
            ),
        ));
    }
    Ok(version)
}

/// `api-key: <key>`, or `Authorization: Bearer <Entra token>`; on v1 the key also as a Bearer
/// token, which is what the stock OpenAI client sends.
fn authenticate(req: &HttpRequest, route: Route, state: &AzureState) -> Result<(), AzureError> {
    let unauthorized = |message| AzureError::new(StatusCode::UNAUTHORIZED, "401", message);
    if let Some(key) = req.headers().get("api-key") {
        return if key.as_bytes() == state.api_key.as_bytes() {
            Ok(())
        } else {
            Err(unauthorized(BAD_KEY))
        };
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match bearer {
        None => Err(unauthorized(MISSING_KEY)),
        Some(token) if token == state.entra_token => Ok(()),
        Some(token) if route.is_v1() && token == state.api_key => Ok(()),
        Some(_) => Err(unauthorized(BAD_TOKEN)),
    }
}

/// A `status=` fault: 429 in Azure's own words and headers; the rest OpenAI-shaped, as Azure
/// passes them through.
fn emulated(status: u16, retry_after: Option<u64>, route: Route, api_version: &str) -> Emulated {
    if status != 429 {
        return Emulated::OpenAi(openai::emulated_error(status, retry_after));
    }
    let secs = retry_after.unwrap_or(1);
    let mut error = AzureError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "429",
        format!(
            "Requests to the {} Operation under Azure OpenAI API version {api_version} have \
             exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry \
             after {secs} seconds. Go here for more info: https://aka.ms/oai/quotaincrease if you \
             would like to further increase the default rate limit. (emulated fault)",
            route.operation()
        ),
    );
    error.retry_after = Some(secs);
    Emulated::Azure(error)
}

/// The two shapes a fault can take on Azure.
enum Emulated {
    Azure(AzureError),
    OpenAi(openai::ApiError),
}

impl Emulated {
    fn respond(&self, ctx: &Ctx) -> HttpResponse {
        match self {
            Emulated::Azure(e) => e.respond(ctx),
            Emulated::OpenAi(e) => e.respond(ctx),
        }
    }
}
