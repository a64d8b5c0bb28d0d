//! Azure OpenAI: native passthrough, as for OpenAI, on Azure's URLs and with Azure's quirks.
//!
//! Both front endpoints exist on Azure, so the client's body goes through with only `model`
//! rewritten to the deployment. The deployment is the route's upstream model (its
//! `target_model`, else its `model`): Azure names a deployment where OpenAI names a model, and
//! a route already says what it sends upstream, so no Azure-only route field is needed.
//!
//! URL forms: with `endpoint` + `api_version`, chat goes to
//! `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…` and Responses
//! to `{endpoint}/openai/responses?api-version=…` (the deployment in `model`, as the OpenAI
//! SDK's Azure client does: Responses is not under deployments there); with the `/openai/v1`
//! `base_url`, both go to `{base_url}/{chat/completions,responses}` without an api-version.
//! Auth is `api-key: <key>`, or `Authorization: Bearer <Entra token>`.
//!
//! What Azure does differently on the way back is undone here: its request id is
//! `apim-request-id`; its 429 body (`code: "429"`, no `type`) and its 400 `content_filter`
//! refusal (`type: null`) are reshaped into the OpenAI error the front promises (keeping
//! `innererror`); a 401/403 is the gateway's credentials; and the content-filter frame that
//! opens a chat stream (empty `id`, no `choices`, `prompt_filter_results`) is dropped, since
//! clients that read `choices[0]` of every chunk fail on it.

use super::{Adapter, ErrorAnswer, Framing, UpstreamCall, UpstreamRequest, path_segment};
use crate::api::stream::first_sse_event;
use crate::api::{Endpoint, FrontRequest};
use crate::config::{AzureApi, Credentials, Provider, ProviderSettings};
use crate::error::GatewayError;
use crate::routing::Decision;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName};
use bytes::Bytes;
use serde_json::Value;

/// The Azure OpenAI adapter.
pub struct AzureOpenAi;

/// Builds the Azure call for a routed front request.
pub fn prepare(
    front: &FrontRequest,
    decision: &Decision,
    previous_response_id: Option<&str>,
) -> Result<UpstreamCall, GatewayError> {
    let ProviderSettings::AzureOpenAi { api } = &decision.provider.settings else {
        return Err(GatewayError::Internal(format!(
            "provider {} is not an Azure OpenAI provider",
            decision.provider.name
        )));
    };
    let deployment = decision.route().upstream_model();
    let path = match (api, front.endpoint) {
        (AzureApi::Deployments { api_version }, Endpoint::ChatCompletions) => format!(
            "/openai/deployments/{}/chat/completions?api-version={}",
            path_segment(deployment),
            path_segment(api_version)
        ),
        (AzureApi::Deployments { api_version }, Endpoint::Responses) => {
            format!(
                "/openai/responses?api-version={}",
                path_segment(api_version)
            )
        }
        (AzureApi::V1, endpoint) => endpoint.upstream_path().to_owned(),
    };
    Ok(UpstreamCall {
        adapter: &AzureOpenAi,
        method: actix_web::http::Method::POST,
        path: path.into(),
        headers: Vec::new(),
        body: front.upstream_body(deployment, previous_response_id),
        stream: front.stream,
    })
}

impl Adapter for AzureOpenAi {
    fn attempt(
        &self,
        provider: &Provider,
        call: &UpstreamCall,
    ) -> Result<UpstreamRequest, GatewayError> {
        let auth = provider.prebuilt.auth(|| match &provider.credentials {
            Credentials::ApiKey(key) => Ok((
                HeaderName::from_static("api-key"),
                super::secret_header(provider, key.expose())?,
            )),
            Credentials::EntraToken(token) => Ok((
                header::AUTHORIZATION,
                super::secret_header(provider, &format!("Bearer {}", token.expose()))?,
            )),
            Credentials::Aws { .. } => Err(GatewayError::Internal(format!(
                "provider {} has AWS credentials",
                provider.name
            ))),
        })?;
        Ok(call.request(provider, auth))
    }

    fn request_id_header(&self) -> &'static str {
        "apim-request-id"
    }

    fn retrieval_path(&self, provider: &Provider, upstream_id: &str) -> Option<String> {
        let id = path_segment(upstream_id);
        Some(match &provider.settings {
            ProviderSettings::AzureOpenAi {
                api: AzureApi::Deployments { api_version },
            } => format!(
                "/openai/responses/{id}?api-version={}",
                path_segment(api_version)
            ),
            _ => format!("/responses/{id}"),
        })
    }

    fn classify(&self, provider: &Provider, answer: ErrorAnswer<'_>) -> GatewayError {
        let (status, headers, body) = answer.parts();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // Azure refused the gateway's key or token: the operator's problem, and the
            // client must not be told its own key is wrong.
            return GatewayError::UpstreamCredentials {
                provider: provider.name.clone(),
            };
        }
        let retry_in = super::seconds_header(headers, "retry-after-ms", 0.001)
            .or_else(|| super::retry_after(headers));
        let body = openai_shaped(status, body);
        super::upstream_failure(provider, status, headers, body, retry_in)
    }

    fn framing(&self) -> Framing {
        Framing::Sse
    }

    fn leading_noise(&self, buf: &[u8]) -> usize {
        let Some((len, None, data)) = first_sse_event(buf) else {
            return 0;
        };
        let Ok(event) = serde_json::from_str::<Value>(&data) else {
            return 0;
        };
        let empty_id = event["id"].as_str() == Some("");
        let no_choices = event["choices"].as_array().is_some_and(Vec::is_empty);
        if empty_id && no_choices && event.get("prompt_filter_results").is_some() {
            len
        } else {
            0
        }
    }

    fn first_event_error(&self, first: &[u8]) -> Option<String> {
        super::openai::error_in_first_event(first)
    }
}

/// An Azure error body in the OpenAI shape the front promises (`providers.md` §7): the
/// content-filter refusal gets `type: invalid_request_error` (its `code`, `param` and
/// `innererror` kept), a 429 gets `rate_limit_error` / `rate_limit_exceeded`. Other bodies are
/// OpenAI-shaped already and pass unchanged.
fn openai_shaped(status: StatusCode, body: Bytes) -> Bytes {
    let Ok(mut doc) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    let Some(error) = doc.get_mut("error").and_then(Value::as_object_mut) else {
        return body;
    };
    let (kind, code) = if error.get("code").and_then(Value::as_str) == Some("content_filter") {
        ("invalid_request_error", "content_filter")
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        ("rate_limit_error", "rate_limit_exceeded")
    } else {
        return body;
    };
    error.insert("type".into(), kind.into());
    error.insert("code".into(), code.into());
    error.entry("param").or_insert(Value::Null);
    // `status` repeats the HTTP status; OpenAI's error object has no such field.
    error.remove("status");
    Bytes::from(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CircuitPolicy, Secret};
    use actix_web::http::header::HeaderValue;
    use std::time::Duration;

    fn provider(credentials: Credentials) -> Provider {
        Provider {
            name: "az".into(),
            settings: ProviderSettings::AzureOpenAi { api: AzureApi::V1 },
            base_url: "http://127.0.0.1:9/openai/v1".into(),
            credentials,
            timeout: Duration::from_secs(1),
            max_retries: 0,
            circuit: CircuitPolicy {
                failures: 0,
                open_for: Duration::from_secs(1),
            },
            prebuilt: Default::default(),
        }
    }

    fn call() -> UpstreamCall {
        UpstreamCall {
            adapter: &AzureOpenAi,
            method: actix_web::http::Method::POST,
            path: "/chat/completions".into(),
            headers: Vec::new(),
            body: Bytes::from_static(b"{}"),
            stream: true,
        }
    }

    #[test]
    fn a_key_goes_in_api_key_and_a_token_as_bearer() {
        let key = Credentials::ApiKey(Secret::new("k1".into()));
        let req = AzureOpenAi.attempt(&provider(key), &call()).expect("built");
        assert_eq!(req.url, "http://127.0.0.1:9/openai/v1/chat/completions");
        assert_eq!(req.headers.len(), 1);
        assert_eq!(req.headers[0].0, "api-key");
        assert_eq!(req.headers[0].1, "k1");
        assert!(req.headers[0].1.is_sensitive());
        let token = Credentials::EntraToken(Secret::new("t1".into()));
        let req = AzureOpenAi
            .attempt(&provider(token), &call())
            .expect("built");
        assert_eq!(req.headers[0].0, header::AUTHORIZATION);
        assert_eq!(req.headers[0].1, "Bearer t1");
    }

    #[test]
    fn deployment_names_cannot_escape_their_path_segment() {
        assert_eq!(path_segment("gpt-4o_prod.1"), "gpt-4o_prod.1");
        assert_eq!(path_segment("a/../b?x=1"), "a%2F..%2Fb%3Fx%3D1");
    }

    #[test]
    fn only_the_opening_filter_frame_is_noise() {
        let frame = b"data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0}]}\n\n";
        let chunk =
            b"data: {\"choices\":[{\"delta\":{\"content\":\"\"}}],\"id\":\"chatcmpl-1\"}\n\n";
        let both = [&frame[..], &chunk[..]].concat();
        assert_eq!(AzureOpenAi.leading_noise(&both), frame.len());
        assert_eq!(AzureOpenAi.leading_noise(chunk), 0);
        assert_eq!(AzureOpenAi.leading_noise(&frame[..20]), 0, "not whole yet");
        // The usage chunk of an OpenAI stream has no choices either, but an id: kept.
        let usage = b"data: {\"choices\":[],\"id\":\"chatcmpl-1\",\"usage\":{}}\n\n";
        assert_eq!(AzureOpenAi.leading_noise(usage), 0);
    }

    #[test]
    fn azure_errors_become_openai_errors() {
        let filtered = Bytes::from_static(
            br#"{"error":{"code":"content_filter","message":"filtered","param":"prompt","type":null,"status":400,"innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#,
        );
        let doc: Value = serde_json::from_slice(&openai_shaped(StatusCode::BAD_REQUEST, filtered))
            .expect("JSON");
        assert_eq!(
            doc,
            serde_json::json!({"error": {"code": "content_filter", "message": "filtered", "param": "prompt", "type": "invalid_request_error", "innererror": {"code": "ResponsibleAIPolicyViolation"}}})
        );
        let limited = Bytes::from_static(br#"{"error":{"code":"429","message":"slow down"}}"#);
        let mut headers = header::HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        let key = Credentials::ApiKey(Secret::new("k".into()));
        let answer = ErrorAnswer {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers: &headers,
            body: limited,
        };
        match AzureOpenAi.classify(&provider(key), answer) {
            GatewayError::Upstream(u) => {
                assert_eq!(u.retry_in, Some(Duration::from_secs(3)));
                let doc: Value = serde_json::from_slice(&u.body).expect("JSON");
                assert_eq!(
                    doc,
                    serde_json::json!({"error": {"code": "rate_limit_exceeded", "message": "slow down", "param": null, "type": "rate_limit_error"}})
                );
            }
            other => panic!("expected an upstream failure, got {other:?}"),
        }
        let other = Bytes::from_static(br#"{"error":{"code":"BadRequest","message":"m"}}"#);
        assert_eq!(
            openai_shaped(StatusCode::BAD_REQUEST, other.clone()),
            other,
            "unchanged"
        );
    }
}
