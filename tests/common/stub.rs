//! A scripted upstream on a raw loopback socket, for what the emulator cannot show: exactly how
//! many times the gateway connected, and when it closed a connection.
//!
//! Each accepted connection has its request (headers and a `Content-Length` body) read, is
//! counted, and is handed to the script. The script's return value is the time the gateway
//! closed the connection, if the script waited for that.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the stub does with one connection after reading its request.
pub type Script = fn(&mut TcpStream);

pub struct Stub {
    /// `http://127.0.0.1:PORT/v1`
    pub base: String,
    requests: Arc<AtomicUsize>,
    closed: Arc<Mutex<Vec<Instant>>>,
}

impl Stub {
    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// When the gateway closed connections that a script waited on.
    pub fn closed(&self) -> Vec<Instant> {
        self.closed.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Starts a stub that runs `script` on every request.
pub fn stub(script: Script) -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind stub");
    let base = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let requests = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(Mutex::new(Vec::new()));
    let (r, c) = (requests.clone(), closed.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (r, c) = (r.clone(), c.clone());
            std::thread::spawn(move || {
                if read_request(&mut conn).is_none() {
                    return;
                }
                r.fetch_add(1, Ordering::SeqCst);
                script(&mut conn);
                if let Ok(mut v) = c.lock()
                    && wait_for_close(&mut conn)
                {
                    v.push(Instant::now());
                }
            });
        }
    });
    Stub {
        base,
        requests,
        closed,
    }
}

/// Reads one request's headers and `Content-Length` body.
fn read_request(conn: &mut TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).ok()
}

/// True when the peer closed the connection (read returns 0 or fails) within 60 s.
fn wait_for_close(conn: &mut TcpStream) -> bool {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = [0u8; 256];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Script: a 200 that promises 100 bytes of JSON and sends 10, then closes.
pub fn torn_200(conn: &mut TcpStream) {
    let _ = conn.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":\"x\",",
    );
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// Script: never answer; the stub then waits for the gateway to hang up.
pub fn silent(_conn: &mut TcpStream) {}

fn reply(conn: &mut TcpStream, status: &str, content_type: &str, extra: &str, body: &str) {
    let _ = conn.write_all(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let _ = conn.shutdown(std::net::Shutdown::Write);
}

/// Script: OpenAI's 503.
pub fn status_503(conn: &mut TcpStream) {
    reply(
        conn,
        "503 Service Unavailable",
        "application/json",
        "",
        r#"{"error":{"message":"The engine is currently overloaded.","type":"server_error","param":null,"code":null}}"#,
    );
}

/// Script: OpenAI's 429, asking for no wait.
pub fn status_429(conn: &mut TcpStream) {
    reply(
        conn,
        "429 Too Many Requests",
        "application/json",
        "retry-after-ms: 1\r\n",
        r#"{"error":{"message":"Rate limit reached.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
    );
}

/// Script: a 200 stream whose first event is an error (OpenAI does this when overloaded).
pub fn stream_error_first(conn: &mut TcpStream) {
    reply(
        conn,
        "200 OK",
        "text/event-stream",
        "",
        "data: {\"error\":{\"message\":\"The server is overloaded (org-secret123).\",\"type\":\"server_error\"}}\n\n",
    );
}

/// Script: a 200 stream that sends nothing for 3 s, then ends.
pub fn stream_silent(conn: &mut TcpStream) {
    let _ = conn.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    std::thread::sleep(Duration::from_secs(3));
    let _ = conn.write_all(b"0\r\n\r\n");
}

/// Script: a 200 stream that sends one chunk event, then nothing for 3 s, then ends.
pub fn stream_stalls_after_first(conn: &mut TcpStream) {
    let event = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[]}\n\n";
    let _ = conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
            event.len()
        )
        .as_bytes(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let _ = conn.write_all(b"0\r\n\r\n");
}

/// The first event of the chunk streams below, and the chunked-encoding head they start with.
const FIRST_CHUNK: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";

fn stream_head_and_first(conn: &mut TcpStream) {
    let _ = conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{FIRST_CHUNK}\r\n",
            FIRST_CHUNK.len()
        )
        .as_bytes(),
    );
}

/// Script: a 200 stream with one content event, then OpenAI's in-stream error event, then end.
pub fn stream_error_after_first(conn: &mut TcpStream) {
    stream_head_and_first(conn);
    let error =
        "data: {\"error\":{\"message\":\"The model had an error.\",\"type\":\"server_error\"}}\n\n";
    let _ = conn.write_all(format!("{:x}\r\n{error}\r\n0\r\n\r\n", error.len()).as_bytes());
}

/// Script: a 200 stream with one content event, then the connection drops.
pub fn stream_drop_after_first(conn: &mut TcpStream) {
    stream_head_and_first(conn);
    std::thread::sleep(Duration::from_millis(50));
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// Script: the connection closes without an answer.
pub fn hang_up(conn: &mut TcpStream) {
    let _ = conn.shutdown(std::net::Shutdown::Both);
}
