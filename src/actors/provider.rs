//! The provider actor: one per HTTP worker thread, owning that thread's upstream pool.
//!
//! `awc::Client` is not `Send`, so each worker has its own client (and keep-alive pool) inside
//! this actor, started on the worker's own arbiter: messages to it never cross threads. It
//! sends a request upstream, retries before any byte has reached the client (429, 5xx and
//! connection failures, with exponential backoff, full jitter and the wait the provider asked
//! for), and hands back either the whole body or a stream's first event with a `Send` channel
//! fed chunk by chunk as the upstream streams (a message's reply must be `Send`, and awc's
//! body is not, so the relay cannot read the upstream itself). Everything provider-specific
//! (each attempt's URL and auth, what an error answer means, the request-id header, stream
//! framing and a failed first event) is asked of the call's `providers::Adapter`; nothing here
//! names a provider. Circuit breaking and per-tenant cost accounting join here.

use super::messages::{Call, CallLimits};
use crate::api::stream::{UpstreamChunk, UpstreamStream};
use crate::config::Provider;
use crate::error::GatewayError;
use crate::providers::{Adapter, ErrorAnswer, UpstreamBody, UpstreamCall, UpstreamResponse, Url};
use crate::telemetry::scope::Scope;
use crate::telemetry::{names, otel};
use actix::{Actor, Context, Handler, ResponseFuture};
use actix_service::ServiceExt;
use actix_tls::connect::{Connection as TcpConnection, Connector as TcpConnector, Resolver};
use actix_web::http::header;
use actix_web::rt::net::TcpStream;
use awc::error::{PayloadError, SendRequestError};
use awc::http::Uri;
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

/// Largest non-streaming upstream body accepted.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Largest upstream error body read.
const MAX_ERROR_BYTES: usize = 256 * 1024;
/// Connect timeout for a new upstream connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First backoff step; doubled per attempt.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Cap of one backoff step.
const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// An upstream asking for a longer wait than this gets its error passed to the client instead.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Stream chunks buffered between the upstream pump and the client.
const STREAM_BUFFER: usize = 32;

/// Owns one worker thread's upstream HTTP client.
pub struct ProviderActor {
    client: awc::Client,
}

impl ProviderActor {
    pub fn new() -> Self {
        // awc's rustls is built without a default crypto provider; ring is the one we ship.
        // Installing twice is harmless (the second call reports the first and changes nothing).
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Requests go out as headers and body in separate small writes: without TCP_NODELAY,
        // Nagle's algorithm holds the body until the upstream ACKs the headers.
        let tcp = TcpConnector::new(Resolver::default()).service().map(
            |conn: TcpConnection<Uri, TcpStream>| {
                let _ = conn.io_ref().set_nodelay(true);
                conn
            },
        );
        let connector = awc::Connector::new()
            .connector(tcp)
            .limit(0)
            .timeout(CONNECT_TIMEOUT);
        let client = awc::Client::builder()
            .connector(connector)
            .disable_redirects()
            .add_default_header((
                header::USER_AGENT,
                concat!("switchyard/", env!("CARGO_PKG_VERSION")),
            ))
            .finish();
        Self { client }
    }
}

impl Default for ProviderActor {
    fn default() -> Self {
        Self::new()
    }
}

impl Actor for ProviderActor {
    type Context = Context<Self>;
}

impl Handler<Call> for ProviderActor {
    type Result = ResponseFuture<Result<UpstreamResponse, GatewayError>>;

    fn handle(&mut self, msg: Call, _ctx: &mut Self::Context) -> Self::Result {
        let Call {
            provider,
            request,
            limits,
            scope,
            trace,
            client_gone,
        } = msg;
        let client = self.client.clone();
        let name = provider.name.clone();
        Box::pin(contained(scope.instrument(async move {
            tokio::select! {
                biased;
                result = send_with_retries(client, provider, request, limits, trace) => result,
                _ = client_gone => {
                    tracing::info!(provider = %name, "client went away; upstream call cancelled");
                    Err(GatewayError::ClientClosed)
                }
            }
        })))
    }
}

/// Runs a call so that a panic inside it (a bug) fails that one request with a 503 instead of
/// stopping the actor, which would leave every later request of this worker without an
/// upstream client. The panic itself is reported by the panic hook.
///
/// A combinator, not an `async fn`: an `async fn` keeps its argument and the future made from
/// it side by side, twice the call's size, and moves the call from one to the other on its
/// first poll (4 KB a request in all).
fn contained<F>(
    call: F,
) -> impl std::future::Future<Output = Result<UpstreamResponse, GatewayError>>
where
    F: std::future::Future<Output = Result<UpstreamResponse, GatewayError>>,
{
    AssertUnwindSafe(call).catch_unwind().map(|caught| {
        caught.unwrap_or_else(|_| {
            Err(GatewayError::Unavailable {
                message: "The gateway hit an internal error on this request; retry it.".into(),
            })
        })
    })
}

async fn send_with_retries(
    client: awc::Client,
    provider: Arc<Provider>,
    request: UpstreamCall,
    limits: CallLimits,
    trace: otel::Trace,
) -> Result<UpstreamResponse, GatewayError> {
    let circuit = provider.prebuilt.circuit(&provider.base_url);
    // Pinned where it is made and awaited through the pin: awaited by value, the retry loop's
    // state (about 1 KB) would be copied into the await's own slot first.
    let mut attempts = std::pin::pin!(async {
        let mut attempt = 0;
        loop {
            let permit =
                circuit
                    .admit(&provider.circuit)
                    .map_err(|retry_in| GatewayError::CircuitOpen {
                        provider: provider.name.clone(),
                        retry_in,
                    })?;
            let started = std::time::Instant::now();
            // One exported span per attempt; it lasts until the upstream's last byte (the pump
            // holds it).
            let attempt_trace = otel::upstream(&trace, attempt + 1, &provider.name);
            let attempt_span = tracing::debug_span!(names::SPAN_UPSTREAM, attempt = i64::from(attempt + 1), provider = %provider.name);
            let sent = send_once(&client, &provider, &request, &limits, &attempt_trace)
                .instrument(attempt_span)
                .await;
            crate::telemetry::metrics::upstream_attempt(&provider.name, &sent, started.elapsed());
            otel::attempt(&attempt_trace, &trace, &sent, attempt);
            let healthy = sent.as_ref().err().is_none_or(|e| !e.endpoint_failure());
            permit.record(healthy, &provider.circuit);
            let err = match sent {
                Ok(resp) => return Ok(resp),
                Err(err) => err,
            };
            let retry = err.retryable() && attempt < provider.max_retries;
            let Some(delay) = retry.then(|| retry_delay(attempt, &err)).flatten() else {
                return Err(err);
            };
            attempt += 1;
            tracing::info!(provider = %provider.name, attempt, delay_ms = delay.as_millis() as u64, error = %err, "retrying upstream");
            actix_web::rt::time::sleep(delay).await;
        }
    });
    match limits.deadline {
        None => attempts.as_mut().await,
        Some(deadline) => actix_web::rt::time::timeout(deadline, attempts)
            .await
            .unwrap_or_else(|_| {
                Err(GatewayError::UpstreamTimeout {
                    provider: provider.name.clone(),
                })
            }),
    }
}

/// How long to wait before the next attempt, or `None` when the upstream asked for too long.
fn retry_delay(attempt: u32, err: &GatewayError) -> Option<Duration> {
    // The provider's adapter read its retry hint when it classified the answer.
    if let GatewayError::Upstream(u) = err
        && let Some(wait) = u.retry_in
    {
        return (wait <= MAX_RETRY_AFTER).then_some(wait);
    }
    let step = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_MAX);
    // Full jitter: anywhere in [step/2, step], so synchronized clients spread out.
    let half = step.as_millis() as u64 / 2;
    Some(Duration::from_millis(half + fastrand::u64(0..=half)))
}

async fn send_once(
    client: &awc::Client,
    provider: &Provider,
    call: &UpstreamCall,
    limits: &CallLimits,
    trace: &otel::Trace,
) -> Result<UpstreamResponse, GatewayError> {
    let adapter = call.adapter;
    // Built per attempt: a signature over the time must be fresh on every retry.
    let request = adapter.attempt(provider, call)?;
    let builder = match request.url {
        Url::Parsed(uri) => client.request(request.method, uri),
        Url::Text(text) => client.request(request.method, text.as_str()),
    };
    let mut builder = builder.timeout(provider.timeout);
    if !request.body.is_empty() {
        builder = builder.insert_header((header::CONTENT_TYPE, "application/json"));
    }
    // With the trace exported, the upstream sees this attempt's span as its parent: its
    // `traceparent` takes the place of the request's (one header insert, not two).
    let mut traceparent = trace.traceparent();
    for (name, mut value) in request.headers {
        if traceparent.is_some() && name.as_str() == "traceparent" {
            value = traceparent.take().unwrap_or(value);
        }
        builder = builder.insert_header((name, value));
    }
    if let Some(tp) = traceparent {
        builder = builder.insert_header((header::HeaderName::from_static("traceparent"), tp));
    }
    let resp = builder
        .send_body(request.body)
        .await
        .map_err(|err| match err {
            SendRequestError::Timeout => GatewayError::UpstreamTimeout {
                provider: provider.name.clone(),
            },
            other => GatewayError::UpstreamUnavailable {
                provider: provider.name.clone(),
                detail: other.to_string(),
            },
        })?;
    let status = resp.status();
    let headers = resp.headers();
    let content_type = headers.get(header::CONTENT_TYPE).cloned();
    let request_id = headers.get(adapter.request_id_header()).cloned();
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if !status.is_success() {
        let headers = headers.clone();
        let body = resp
            .timeout(provider.timeout)
            .body()
            .limit(MAX_ERROR_BYTES)
            .await
            .unwrap_or_default();
        let answer = ErrorAnswer {
            status,
            headers: &headers,
            body,
        };
        return Err(adapter.classify(provider, answer));
    }
    let framing = adapter.framing();
    let body = if call.stream && framing.is_stream(content_type.as_ref()) {
        // Hold the headers until the first event: an error event there (or none in time) can
        // still be retried or fall back, since nothing has reached the client.
        let mut resp = resp;
        let first = first_event(&mut resp, adapter, limits.first_byte_timeout, provider).await?;
        if let Some(message) = adapter.first_event_error(&first) {
            return Err(GatewayError::UpstreamStreamError {
                provider: provider.name.clone(),
                message,
            });
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let held = trace.clone();
        let pumped = pump(resp, tx, provider.timeout);
        actix_web::rt::spawn(Scope::current().instrument(async move {
            pumped.await;
            drop(held);
        }));
        UpstreamBody::Stream(UpstreamStream {
            first: Some(first),
            rest: rx,
        })
    } else {
        // awc puts no deadline on a body by default: a silent upstream must not hang the request.
        let bytes = resp
            .timeout(provider.timeout)
            .body()
            .limit(MAX_RESPONSE_BYTES)
            .await
            .map_err(|err| GatewayError::UpstreamIncomplete {
                provider: provider.name.clone(),
                detail: match err {
                    PayloadError::Overflow => {
                        format!("the response body is larger than {MAX_RESPONSE_BYTES} bytes")
                    }
                    other => format!("the connection broke while reading the response: {other}"),
                },
            })?;
        check_complete(&bytes, declared_len, content_type.as_ref()).map_err(|detail| {
            GatewayError::UpstreamIncomplete {
                provider: provider.name.clone(),
                detail,
            }
        })?;
        UpstreamBody::Full(bytes)
    };
    Ok(UpstreamResponse {
        status,
        content_type,
        request_id,
        body,
    })
}

/// awc ends a body cut off by a dropped connection as if it were complete, so a short body is
/// caught here: against `content-length` when there is one, else by checking that a JSON body
/// parses. A torn answer must never reach the client as a 200.
fn check_complete(
    body: &[u8],
    declared_len: Option<usize>,
    content_type: Option<&header::HeaderValue>,
) -> Result<(), String> {
    match declared_len {
        Some(n) if n != body.len() => Err(format!(
            "the connection broke while reading the response ({} of {n} bytes arrived)",
            body.len()
        )),
        Some(_) => Ok(()),
        None => {
            let json = content_type
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if json && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
                return Err("the response body ended before its JSON was complete".into());
            }
            Ok(())
        }
    }
}

/// Reads a stream until its first whole event has arrived (within `wait`), and returns every
/// byte read so far, less the leading events the adapter calls noise.
async fn first_event<S>(
    body: &mut S,
    adapter: &dyn Adapter,
    wait: Duration,
    provider: &Provider,
) -> Result<Bytes, GatewayError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| GatewayError::UpstreamUnavailable {
                provider: provider.name.clone(),
                detail: format!("the stream broke before its first event: {err}"),
            })?;
            buf.extend_from_slice(&chunk);
            loop {
                let noise = adapter.leading_noise(&buf).min(buf.len());
                if noise == 0 {
                    break;
                }
                let _ = buf.split_to(noise);
            }
            if adapter.framing().has_whole_event(&buf) {
                return Ok(buf.freeze());
            }
        }
        Err(GatewayError::UpstreamStreamError {
            provider: provider.name.clone(),
            message: "the stream ended before its first event".into(),
        })
    };
    actix_web::rt::time::timeout(wait, read)
        .await
        .unwrap_or_else(|_| {
            Err(GatewayError::UpstreamTimeout {
                provider: provider.name.clone(),
            })
        })
}

/// Moves the rest of an upstream body (its first event went out with the answer) into a
/// channel, chunk by chunk, until it ends, fails, falls silent for longer than `idle`, or the
/// client goes away (dropping the receiver closes the upstream connection with it).
async fn pump<S>(mut body: S, tx: mpsc::Sender<UpstreamChunk>, idle: Duration)
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    // One timer for the whole stream, set lazily: a chunk only notes when it came, and the
    // timer, when it fires, moves itself to `idle` after the last chunk if one came since.
    // Pushing the timer back on every chunk cost a timer-wheel update and a clock read per
    // chunk; this way a stream whose chunks come faster than `idle` re-arms it once per `idle`.
    let mut last = Instant::now();
    let deadline = actix_web::rt::time::sleep(idle);
    tokio::pin!(deadline);
    loop {
        let item = tokio::select! {
            biased;
            item = body.next() => item,
            () = &mut deadline => {
                let due = last + idle;
                if due > Instant::now() {
                    deadline.as_mut().reset(due);
                    continue;
                }
                let why = format!("the upstream sent no data for {} s", idle.as_secs());
                let _ = tx.send(Err(why)).await;
                return;
            }
        };
        match item {
            None => return,
            Some(Ok(bytes)) => {
                if !forward(&tx, Ok(bytes)).await {
                    return;
                }
                last = Instant::now();
            }
            Some(Err(err)) => {
                // The OS's words stay in the log; the client is told what happened, not how.
                tracing::warn!(error = %err, "upstream stream broke");
                let _ = tx.send(Err("the upstream connection broke".into())).await;
                return;
            }
        }
    }
}

/// Hands `chunk` to the relay, waiting only while the channel is full; false once the relay
/// is gone. The channel almost always has room, and `try_send` takes the slot directly where
/// `send` first builds the future that waits for one.
async fn forward(tx: &mpsc::Sender<UpstreamChunk>, chunk: UpstreamChunk) -> bool {
    match tx.try_send(chunk) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(chunk)) => tx.send(chunk).await.is_ok(),
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;

    fn upstream(status: u16, retry_in: Option<Duration>) -> GatewayError {
        GatewayError::Upstream(Box::new(crate::error::UpstreamFailure {
            provider: "p".into(),
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: Bytes::new(),
            retry_after: None,
            retry_after_ms: None,
            retry_in,
        }))
    }

    #[actix_web::test]
    async fn a_panicking_call_is_a_503_for_that_request_only() {
        use actix_web::ResponseError;
        let panicking = async { panic!("a bug") };
        match contained(panicking).await {
            Err(e @ GatewayError::Unavailable { .. }) => assert_eq!(e.status_code(), 503),
            other => panic!("expected a 503, got {other:?}"),
        }
        let fine = async { Err(GatewayError::ClientClosed) };
        assert!(matches!(
            contained(fine).await,
            Err(GatewayError::ClientClosed)
        ));
    }

    #[test]
    fn short_or_torn_bodies_are_failures() {
        let json = header::HeaderValue::from_static("application/json");
        assert!(check_complete(b"{}", Some(2), Some(&json)).is_ok());
        assert!(
            check_complete(b"{\"a\"", Some(10), Some(&json)).is_err_and(|m| m.contains("4 of 10"))
        );
        assert!(check_complete(b"{\"a\":", None, Some(&json)).is_err());
        assert!(check_complete(b"{\"a\":1}", None, Some(&json)).is_ok());
        assert!(check_complete(b"plain", None, None).is_ok());
    }

    #[test]
    fn honours_the_providers_retry_hint_unless_too_long() {
        // The hint itself is read by each adapter (see providers::openai's tests).
        assert_eq!(
            retry_delay(0, &upstream(429, Some(Duration::from_secs(2)))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_delay(0, &upstream(429, Some(Duration::from_millis(150)))),
            Some(Duration::from_millis(150))
        );
        assert_eq!(
            retry_delay(0, &upstream(429, Some(Duration::from_secs(60)))),
            None,
            "too long: the client decides"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 0..8 {
            let d = retry_delay(attempt, &upstream(503, None)).unwrap_or_default();
            let step = BACKOFF_BASE.saturating_mul(1 << attempt).min(BACKOFF_MAX);
            assert!(
                d >= step / 2 && d <= step,
                "attempt {attempt}: {d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
    }

    /// An upstream body that sends `chunks` chunks `every` apart after the first, then falls
    /// silent without closing.
    fn paced(chunks: u32, every: Duration) -> impl Stream<Item = Result<Bytes, PayloadError>> {
        Box::pin(futures_util::stream::unfold(0, move |sent| async move {
            if sent == chunks {
                std::future::pending::<()>().await;
            }
            actix_web::rt::time::sleep(every).await;
            Some((Ok(Bytes::from(format!("data: {sent}\n\n"))), sent + 1))
        }))
    }

    #[actix_web::test]
    async fn a_stream_falls_silent_only_after_idle_without_a_chunk() {
        // Chunks 100 ms apart for 600 ms, the idle limit 300 ms: the timer set when the
        // stream started must move on with the chunks, and fire 300 ms after the last one.
        let idle = Duration::from_millis(300);
        let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
        actix_web::rt::spawn(pump(paced(6, Duration::from_millis(100)), tx, idle));
        let mut chunks = Vec::new();
        let mut last = std::time::Instant::now();
        let why = loop {
            match rx.recv().await {
                Some(Ok(chunk)) => {
                    chunks.push(chunk);
                    last = std::time::Instant::now();
                }
                Some(Err(why)) => break why,
                None => panic!("the pump ended without saying why"),
            }
        };
        let silent = last.elapsed();
        assert_eq!(chunks.len(), 6);
        assert_eq!(&chunks[5][..], b"data: 5\n\n");
        assert_eq!(why, "the upstream sent no data for 0 s");
        assert!(
            silent >= Duration::from_millis(290) && silent < Duration::from_secs(2),
            "the timeout fired {silent:?} after the last chunk"
        );
        assert!(rx.recv().await.is_none(), "nothing after the timeout");
    }

    /// Numbers its attempts in a header, as a SigV4 signer stamps the time into each one.
    struct Numbered(std::sync::atomic::AtomicU32);
    static NUMBERED: Numbered = Numbered(std::sync::atomic::AtomicU32::new(0));

    impl Adapter for Numbered {
        fn attempt(
            &self,
            provider: &Provider,
            call: &UpstreamCall,
        ) -> Result<crate::providers::UpstreamRequest, GatewayError> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            Ok(crate::providers::UpstreamRequest {
                method: call.method.clone(),
                url: crate::providers::Url::Text(format!("{}{}", provider.base_url, call.path)),
                headers: vec![(
                    header::HeaderName::from_static("x-attempt"),
                    header::HeaderValue::from(n),
                )],
                body: call.body.clone(),
            })
        }
        fn request_id_header(&self) -> &'static str {
            "x-numbered-id"
        }
        fn classify(
            &self,
            provider: &Provider,
            answer: crate::providers::ErrorAnswer<'_>,
        ) -> GatewayError {
            let (status, headers, body) = answer.parts();
            crate::providers::upstream_failure(
                provider,
                status,
                headers,
                body,
                Some(Duration::ZERO),
            )
        }
        fn framing(&self) -> crate::providers::Framing {
            crate::providers::Framing::Sse
        }
        fn first_event_error(&self, _first: &[u8]) -> Option<String> {
            None
        }
    }

    #[actix_web::test]
    async fn every_attempt_is_built_afresh_by_the_adapter() {
        use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
        use std::sync::Mutex;
        // Two 503s, then an answer: the upstream must see three requests, numbered 1, 2, 3.
        let seen: web::Data<Mutex<Vec<String>>> = web::Data::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let data = seen.clone();
        let server = HttpServer::new(move || {
            App::new().app_data(data.clone()).default_service(web::to(
                |req: HttpRequest, seen: web::Data<Mutex<Vec<String>>>| async move {
                    let n = req
                        .headers()
                        .get("x-attempt")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    let mut seen = seen.lock().expect("lock");
                    seen.push(n.clone());
                    if seen.len() < 3 {
                        HttpResponse::ServiceUnavailable().body("busy")
                    } else {
                        HttpResponse::Ok()
                            .insert_header(("x-numbered-id", format!("up-{n}")))
                            .content_type("application/json")
                            .body("{\"ok\":true}")
                    }
                },
            ))
        })
        .workers(1)
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        let provider = Arc::new(Provider {
            name: "numbered".into(),
            settings: crate::config::ProviderSettings::OpenAi {
                organization: None,
                project: None,
            },
            base_url: format!("http://{addr}"),
            credentials: crate::config::Credentials::ApiKey(crate::config::Secret::new("k".into())),
            timeout: Duration::from_secs(5),
            max_retries: 2,
            circuit: crate::config::CircuitPolicy {
                failures: 0,
                open_for: Duration::from_secs(1),
            },
            prebuilt: Default::default(),
        });
        let call = UpstreamCall {
            adapter: &NUMBERED,
            method: actix_web::http::Method::POST,
            path: "/x".into(),
            headers: Vec::new(),
            body: Bytes::from_static(b"{}"),
            stream: false,
        };
        let limits = CallLimits {
            first_byte_timeout: Duration::from_secs(5),
            deadline: None,
        };
        let answer = send_with_retries(
            ProviderActor::new().client,
            provider,
            call,
            limits,
            otel::Trace::default(),
        )
        .await
        .expect("answered on the third attempt");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.request_id.as_ref().and_then(|v| v.to_str().ok()),
            Some("up-3"),
            "the request id comes from the adapter's header"
        );
        assert!(matches!(answer.body, UpstreamBody::Full(ref b) if &b[..] == b"{\"ok\":true}"));
        assert_eq!(*seen.lock().expect("lock"), ["1", "2", "3"]);
        handle.stop(false).await;
    }
}
