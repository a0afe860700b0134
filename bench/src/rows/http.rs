//! HTTP calls through the gateway: 64 keep-alive connections, each posting `null` to
//! `/v1/grains/counter/h<i>/get` one request at a time, against the floor: a bare axum
//! handler on the same route pattern returning the same bytes. Load comes from `wrk` when
//! it is on the PATH, else from a minimal HTTP/1.1 client in this process (one task per
//! connection, a pre-built request, responses framed by Content-Length). Server and load
//! share the machine's cores in both measurements.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::http::header;
use axum::routing::post;
use granary::RunningSilo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::RowOut;
use crate::common::{Opts, Scratch, call, open_silo, progress};
use crate::report::{Better, Figure, Op};

const ROW: &str = "http";
const CONNECTIONS: usize = 64;

pub async fn run(opts: &Opts) -> anyhow::Result<RowOut> {
    let measure = opts.secs(2.0, 10.0);
    let warm = Duration::from_millis(500);
    let scratch = Scratch::new(ROW, &["counter"])?;
    let silo = open_silo(scratch.config()).await?;
    for i in 0..CONNECTIONS {
        call(&silo, "counter", &format!("h{i}"), "get", b"null").await?;
    }
    let reply = call(&silo, "counter", "h0", "get", b"null").await?;
    let running = RunningSilo::start(silo.clone()).await?;
    let ours_addr = running.addr;

    let floor_addr = bare_axum(reply.clone()).await?;

    // Both answer the same bytes.
    let client = reqwest::Client::new();
    for addr in [ours_addr, floor_addr] {
        let r = client
            .post(format!("http://{addr}/v1/grains/counter/h1/get"))
            .header(header::CONTENT_TYPE, "application/json")
            .body("null")
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "{addr} answered {}", r.status());
        let body = r.bytes().await?;
        anyhow::ensure!(
            body.as_ref() == reply.as_slice(),
            "{addr} answered {body:?}"
        );
    }

    let wrk = find_wrk();
    let load = match &wrk {
        Some(path) => format!("wrk ({}), 2 threads", path.display()),
        None => "the bench's own HTTP/1.1 client (wrk not on PATH)".to_owned(),
    };
    progress(ROW, format!("load generator: {load}"));

    progress(
        ROW,
        format!("floor: bare axum, {CONNECTIONS} connections, {measure:?}"),
    );
    let floor = drive(&wrk, floor_addr, warm, measure, &scratch).await?;
    progress(ROW, format!("floor {floor:.0} requests/s"));
    progress(
        ROW,
        format!("ours: gateway, {CONNECTIONS} connections, {measure:?}"),
    );
    let ours = drive(&wrk, ours_addr, warm, measure, &scratch).await?;
    progress(ROW, format!("ours {ours:.0} requests/s"));
    drop(running);

    Ok(RowOut::new(vec![
        Figure::new(
            "HTTP calls through the gateway (keep-alive, 64 connections, counter `get`)",
            "req/s",
            Better::Higher,
            ours,
        )
        .floor(
            floor,
            "a bare axum 0.8 handler on `POST /v1/grains/{kind}/{key}/{method}` returning \
             the same bytes and content type, same runtime, same load",
        )
        .share()
        .ratio_target(Op::AtLeast, 0.6, "≥ 60 % of floor")
        .note(format!(
            "Load: {load}, in the same process or machine as the server (2 cores shared)"
        )),
    ]))
}

/// A bare axum server answering every grain call with `reply`.
async fn bare_axum(reply: Vec<u8>) -> anyhow::Result<SocketAddr> {
    let reply = axum::body::Bytes::from(reply);
    let router = Router::new().route(
        "/v1/grains/{kind}/{key}/{method}",
        post(move || {
            let reply = reply.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], reply) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(addr)
}

fn find_wrk() -> Option<std::path::PathBuf> {
    if std::env::var("GRANARY_BENCH_LOAD").as_deref() == Ok("builtin") {
        return None;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("wrk"))
        .find(|p| p.is_file())
}

/// Requests per second against `addr` over `measure`, after `warm`.
async fn drive(
    wrk: &Option<std::path::PathBuf>,
    addr: SocketAddr,
    warm: Duration,
    measure: Duration,
    scratch: &Scratch,
) -> anyhow::Result<f64> {
    match wrk {
        Some(wrk) => {
            let script = scratch.path("post.lua");
            std::fs::write(&script, WRK_SCRIPT)?;
            // A short run first: connections, grains and caches warm.
            run_wrk(wrk, addr, warm.max(Duration::from_secs(1)), &script).await?;
            run_wrk(wrk, addr, measure, &script).await
        }
        None => builtin_load(addr, warm, measure).await,
    }
}

const WRK_SCRIPT: &str = r#"
wrk.method = "POST"
wrk.body = "null"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/grains/counter/h" .. (n % 64) .. "/get")
end
"#;

async fn run_wrk(
    wrk: &Path,
    addr: SocketAddr,
    duration: Duration,
    script: &Path,
) -> anyhow::Result<f64> {
    let mut cmd = std::process::Command::new(wrk);
    cmd.args(["-t2", &format!("-c{CONNECTIONS}")])
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("-s")
        .arg(script)
        .arg(format!("http://{addr}/"));
    // The server runs on this process's runtime: wait for wrk off its threads.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors: {text}");
    }
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))
}

async fn builtin_load(addr: SocketAddr, warm: Duration, measure: Duration) -> anyhow::Result<f64> {
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CONNECTIONS {
        let (counting, stop, done) = (counting.clone(), stop.clone(), done.clone());
        let path = format!("/v1/grains/counter/h{i}/get");
        tasks.spawn(async move { connection(addr, &path, &counting, &stop, &done).await });
    }
    tokio::time::sleep(warm).await;
    counting.store(true, Ordering::Relaxed);
    let before = done.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(measure).await;
    let count = done.load(Ordering::Relaxed) - before;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// One keep-alive connection sending the same request until `stop`.
async fn connection(
    addr: SocketAddr,
    path: &str,
    counting: &AtomicBool,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: 4\r\n\r\nnull"
    )
    .into_bytes();
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        stream.write_all(&request).await?;
        buf.clear();
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            buf.extend_from_slice(&chunk[..n]);
            if response_complete(&buf)? {
                break;
            }
        }
        if !buf.starts_with(b"HTTP/1.1 200") {
            bail!(
                "unexpected response: {}",
                String::from_utf8_lossy(&buf[..buf.len().min(200)])
            );
        }
        if counting.load(Ordering::Relaxed) {
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Whether `buf` holds a whole response (headers and a Content-Length body).
fn response_complete(buf: &[u8]) -> anyhow::Result<bool> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(false);
    };
    let headers = std::str::from_utf8(&buf[..end])?;
    let length: usize = headers
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("response without content-length")?;
    Ok(buf.len() >= end + 4 + length)
}
