//! The admin HTTP endpoint (`[admin] listen`), served by shard 0 from the shards' metric
//! snapshots and the cross-shard links: GET /metrics (Prometheus text), GET /queue/summary
//! (JSON, by domain, like qshape), POST /queue/flush[?domain=D] (retry deferred mail now).
//! One request per connection; requests are parsed with httparse.

use crate::metrics;
use crate::shard::Shard;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

/// Largest request head read; admin requests are tiny.
const REQUEST_BYTES_MAX: usize = 16 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(shard: Rc<Shard>, listener: TcpListener, token: Option<String>) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.drain_started.wait().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(s)) => {
                glommio::spawn_local(handle(Rc::clone(&shard), s, token.clone())).detach();
            }
            Some(Err(e)) => {
                log::warn!("admin accept: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(shard: Rc<Shard>, mut s: TcpStream, token: Option<String>) {
    let _ = s.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut buf = vec![0u8; REQUEST_BYTES_MAX];
    let mut n = 0;
    let (status, ctype, body) = loop {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..n]) {
            Ok(httparse::Status::Complete(_)) => break route(&shard, &req, token.as_deref()),
            Ok(httparse::Status::Partial) if n < buf.len() => continue,
            _ => break (400, "text/plain", "bad request\n".to_string()),
        }
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Bad Request",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body.as_bytes()).await;
    let _ = s.close().await;
}

fn route(
    shard: &Rc<Shard>,
    req: &httparse::Request<'_, '_>,
    token: Option<&str>,
) -> (u16, &'static str, String) {
    if let Some(t) = token {
        let ok = req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("authorization")
                && h.value
                    .strip_prefix(b"Bearer ")
                    .is_some_and(|v| v == t.as_bytes())
        });
        if !ok {
            return (401, "text/plain", "missing or wrong bearer token\n".into());
        }
    }
    let path = req.path.unwrap_or("/");
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    match (req.method.unwrap_or(""), path) {
        ("GET", "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(&shard.board.snapshot()),
        ),
        ("GET", "/queue/summary") => {
            let summary = metrics::summary(&shard.board.snapshot());
            (
                200,
                "application/json",
                serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n",
            )
        }
        ("POST", "/queue/flush") => {
            let domain = param("domain").unwrap_or_default();
            let n = shard.links.flush_everywhere(&domain);
            let what = if domain.is_empty() {
                "all domains".to_string()
            } else {
                domain
            };
            (
                200,
                "application/json",
                format!("{{\"flushed\": \"{what}\", \"retried_here\": {n}}}\n"),
            )
        }
        ("POST", "/queue/hold" | "/queue/release" | "/queue/delete" | "/queue/bounce") => {
            use crate::deliver::AdminOp;
            let op = match path {
                "/queue/hold" => AdminOp::Hold,
                "/queue/release" => AdminOp::Release,
                "/queue/delete" => AdminOp::Delete,
                _ => AdminOp::Bounce,
            };
            let Some(id) = param("id")
                .as_deref()
                .and_then(crate::queue::record::QueueId::parse)
            else {
                return (
                    400,
                    "text/plain",
                    "id=QUEUEID (16 hex digits) required\n".into(),
                );
            };
            shard.links.admin_everywhere(op, id);
            (
                200,
                "application/json",
                format!("{{\"requested\": \"{op:?}\", \"id\": \"{id}\"}}\n"),
            )
        }
        (
            _,
            "/metrics" | "/queue/summary" | "/queue/flush" | "/queue/hold" | "/queue/release"
            | "/queue/delete" | "/queue/bounce",
        ) => (405, "text/plain", "method not allowed\n".into()),
        _ => (404, "text/plain", "not found\n".into()),
    }
}
