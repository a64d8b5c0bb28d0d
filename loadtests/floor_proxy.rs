//! The stack's floor: the least an actix-web server with an awc client can do as an LLM proxy,
//! to measure next to nginx and the gateway (`loadtests/ab.py`'s `floor` variant, `ttft.py`).
//!
//! It is built from the same crates as the gateway (the vendored actix-http and awc, mimalloc,
//! one worker, an upstream pool with `TCP_NODELAY`) and does only what any proxy must: read the
//! request, send it upstream with the provider's key, and answer, a whole answer after reading
//! it whole (with its length, as the gateway answers), a stream event by event as it arrives.
//! No authentication, parsing, routing, usage reading, metrics or logs. What the gateway costs
//! beyond this is the gateway's own; what this costs beyond nginx is the stack's.
//!
//! Run: `cargo run --release --example floor-proxy -- --listen 127.0.0.1:0
//! --upstream http://127.0.0.1:PORT/v1 --key sk-emulator-openai`; it prints
//! `floor proxy listening on http://ADDR` and forwards every request to the upstream's
//! `/chat/completions`.

use actix_web::http::header;
use actix_web::{App, HttpResponse, HttpServer, web};
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

struct Upstream {
    client: awc::Client,
    url: String,
    auth: String,
}

fn client() -> awc::Client {
    use actix_service::ServiceExt;
    use actix_tls::connect::{Connection, Connector, Resolver};
    use actix_web::rt::net::TcpStream;
    let tcp = Connector::new(Resolver::default()).service().map(
        |conn: Connection<awc::http::Uri, TcpStream>| {
            let _ = conn.io_ref().set_nodelay(true);
            conn
        },
    );
    awc::Client::builder()
        .connector(awc::Connector::new().connector(tcp).limit(0))
        .disable_redirects()
        .timeout(Duration::from_secs(30))
        .finish()
}

async fn forward(body: web::Bytes, up: web::Data<Upstream>) -> actix_web::Result<HttpResponse> {
    let resp = up
        .client
        .post(&up.url)
        .insert_header((header::AUTHORIZATION, up.auth.as_str()))
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .send_body(body)
        .await
        .map_err(actix_web::error::ErrorBadGateway)?;
    let mut answer = HttpResponse::build(resp.status());
    let kind = resp.headers().get(header::CONTENT_TYPE).cloned();
    let stream = kind
        .as_ref()
        .is_some_and(|k| k.as_bytes().starts_with(b"text/event-stream"));
    if let Some(kind) = kind {
        answer.insert_header((header::CONTENT_TYPE, kind));
    }
    if stream {
        Ok(answer.streaming(resp))
    } else {
        let mut resp = resp;
        let bytes = resp
            .body()
            .limit(64 << 20)
            .await
            .map_err(actix_web::error::ErrorBadGateway)?;
        Ok(answer.body(bytes))
    }
}

fn main() -> std::io::Result<()> {
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let base = arg("--upstream").expect("--upstream http://HOST:PORT/v1");
    let key = arg("--key").unwrap_or_default();
    let url = format!("{}/chat/completions", base.trim_end_matches('/'));
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(Upstream {
                    client: client(),
                    url: url.clone(),
                    auth: format!("Bearer {key}"),
                }))
                .app_data(web::PayloadConfig::new(16 << 20))
                // No route table: a pattern with a tail costs a regex match per request.
                .default_service(web::to(forward))
        })
        // As the gateway: a stream's small writes must not wait behind Nagle's algorithm.
        .on_connect(|conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
        })
        .workers(1)
        .bind(&listen)?;
        for addr in server.addrs() {
            println!("floor proxy listening on http://{addr}");
        }
        server.run().await
    })
}
