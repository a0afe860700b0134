//! The harness of the workspace integration tests: a real silo with the real example
//! components, in-process ([`TestSilo`]) or as a `granary serve` child process
//! ([`ChildSilo`]) that can be killed with SIGKILL or drained with SIGTERM.
//!
//! The components come from `cargo xtask build` (`target/grains`, `target/test-grains`);
//! `cargo xtask test` builds them before running the tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use granary::storage::{SledStorage, StorageError};
use granary::{Config, RunningSilo, Silo};
use prometheus_client::metrics::histogram::Histogram;
use tempfile::TempDir;

/// Opens a stopped silo's store directly, to read or write what it committed.
pub fn open_store(db: &Path) -> Result<SledStorage, StorageError> {
    SledStorage::open(db, u64::MAX, Histogram::new([1.0]))
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
        .to_path_buf()
}

/// The compiled component of `kind`, from the examples or the test fixtures.
pub fn component(kind: &str) -> PathBuf {
    let target = workspace_root().join("target");
    for dir in ["grains", "test-grains"] {
        let path = target.join(dir).join(format!("{kind}.wasm"));
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "{kind}.wasm not found under target/grains or target/test-grains: run `cargo xtask build` (or `cargo xtask test`) first"
    );
}

/// A fresh grains directory holding copies of the given kinds.
pub fn grains_dir(kinds: &[&str]) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for kind in kinds {
        std::fs::copy(component(kind), dir.path().join(format!("{kind}.wasm")))
            .expect("copying a component");
    }
    dir
}

/// Compiled components are cached across tests (the cache verifies every entry).
pub fn shared_cache_dir() -> PathBuf {
    workspace_root().join("target/test-compile-cache")
}

pub const ALL_KINDS: &[&str] = &["counter", "ledger", "probe"];

/// A silo running inside the test process on 127.0.0.1:0.
pub struct TestSilo {
    pub silo: Arc<Silo>,
    pub base: String,
    pub client: reqwest::Client,
    running: Option<RunningSilo>,
    pub grains: TempDir,
    pub data: TempDir,
}

impl TestSilo {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let grains = grains_dir(ALL_KINDS);
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            grains_dir: grains.path().to_path_buf(),
            data_dir: data.path().join("data"),
            cache_dir: Some(shared_cache_dir()),
            // Every engine maps two pages per instance slot up front; tests run several
            // silos in one process, so keep each pool small.
            max_activations: 2_000,
            ..Config::default()
        };
        adjust(&mut config);
        let silo = tokio::task::spawn_blocking(move || Silo::open(config))
            .await
            .unwrap()
            .expect("opening the silo");
        let running = RunningSilo::start(silo.clone()).await.expect("starting");
        Self {
            base: format!("http://{}", running.addr),
            silo,
            client: reqwest::Client::new(),
            running: Some(running),
            grains,
            data,
        }
    }

    /// `POST /v1/grains/{target}/{method}` with `body`; returns status and body text.
    pub async fn call(&self, target: &str, method: &str, body: &str) -> (u16, String) {
        post(&self.client, &self.base, target, method, body).await
    }

    /// A probe's committed state, read straight from storage (no turn runs).
    pub fn stored_probe(&self, key: &str) -> serde_json::Value {
        let grain = granary::GrainId::parse("probe", key).expect("a valid key");
        let bytes = self
            .silo
            .storage
            .load_state(&grain)
            .expect("reading state")
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    pub async fn shutdown(mut self) -> bool {
        let running = self.running.take().expect("running");
        running.shutdown().await
    }
}

pub async fn post(
    client: &reqwest::Client,
    base: &str,
    target: &str,
    method: &str,
    body: &str,
) -> (u16, String) {
    let r = client
        .post(format!("{base}/v1/grains/{target}/{method}"))
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// `GET base + path`: status and body.
pub async fn http_get(client: &reqwest::Client, base: &str, path: &str) -> (u16, String) {
    let r = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .expect("request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// The `error` code of a JSON error answer (empty when the body is not one).
pub fn error_code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["error"].as_str().unwrap_or_default().to_owned()
}

/// How one transfer of [`ledger_transfer`] went.
pub enum Transfer {
    Moved,
    /// 422: the ledger refused it (insufficient funds), on purpose.
    Refused,
    /// Any other answer: status and body.
    Unexpected(String),
    /// The request failed: the server is gone.
    Gone,
}

/// The `i`-th transfer of a fixed pattern over the ledger accounts `acct0..accounts`;
/// every fifth asks for more than any account holds. `None` when the pattern picks the
/// same account twice.
pub async fn ledger_transfer(
    http: &reqwest::Client,
    base: &str,
    i: usize,
    accounts: usize,
) -> Option<Transfer> {
    let from = i % accounts;
    let to = (i * 3 + 1) % accounts;
    if from == to {
        return None;
    }
    let amount = if i.is_multiple_of(5) {
        1_000_000
    } else {
        (i % 50) as u64 + 1
    };
    let body = format!(r#"{{"to":"acct{to}","amount":{amount}}}"#);
    let sent = http
        .post(format!("{base}/v1/grains/ledger/acct{from}/transfer"))
        .body(body)
        .send()
        .await;
    Some(match sent {
        Ok(r) if r.status() == 200 => Transfer::Moved,
        Ok(r) if r.status() == 422 => Transfer::Refused,
        Ok(r) => {
            let status = r.status();
            Transfer::Unexpected(format!("{status} {}", r.text().await.unwrap_or_default()))
        }
        Err(_) => Transfer::Gone,
    })
}

/// Deposits `amount` into each of the ledger accounts `acct0..accounts`.
pub async fn ledger_fund(http: &reqwest::Client, base: &str, accounts: usize, amount: u64) {
    for a in 0..accounts {
        let (status, body) = post(
            http,
            base,
            &format!("ledger/acct{a}"),
            "deposit",
            &amount.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// What the transfer clients of [`spawn_transfers`] saw.
#[derive(Default)]
pub struct Transfers {
    pub moved: AtomicU64,
    pub refused: AtomicU64,
    unexpected: Mutex<Vec<String>>,
}

impl Transfers {
    /// Answers other than 200 and 422, as `status body`.
    pub fn take_unexpected(&self) -> Vec<String> {
        std::mem::take(&mut *self.unexpected.lock().unwrap())
    }
}

/// `clients` tasks running [`ledger_transfer`] in a loop (each its own slice of the
/// pattern) until `stop` is set or the silo is gone.
pub fn spawn_transfers(
    http: &reqwest::Client,
    base: &str,
    clients: usize,
    accounts: usize,
    stop: &Arc<AtomicBool>,
) -> (Arc<Transfers>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Transfers::default());
    let tasks = (0..clients)
        .map(|c| {
            let (http, base, stop, seen) =
                (http.clone(), base.to_owned(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    i += 7;
                    match ledger_transfer(&http, &base, i, accounts).await {
                        None => {}
                        Some(Transfer::Moved) => {
                            seen.moved.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Transfer::Refused) => {
                            seen.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Transfer::Unexpected(answer)) => {
                            seen.unexpected.lock().unwrap().push(answer);
                        }
                        Some(Transfer::Gone) => break,
                    }
                }
            })
        })
        .collect();
    (seen, tasks)
}

/// The ledger's total over `acct0..accounts` once every committed credit is delivered:
/// never above `expected` (a credit applied twice), polled for up to 30 s while below it.
pub async fn ledger_total_settled(
    http: &reqwest::Client,
    base: &str,
    accounts: usize,
    expected: u64,
) -> u64 {
    let started = Instant::now();
    loop {
        let mut total = 0;
        for a in 0..accounts {
            let (status, body) = post(http, base, &format!("ledger/acct{a}"), "balance", "").await;
            assert_eq!(status, 200, "{body}");
            total += body.parse::<u64>().unwrap();
        }
        assert!(
            total <= expected,
            "a credit was applied twice: total {total} > {expected}"
        );
        if total == expected || started.elapsed() > Duration::from_secs(30) {
            return total;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registers a reminder `tick` every 100 ms on each of the probe grains `r0..grains`
/// (the silo must allow 100 ms periods: `GRANARY_MIN_REMINDER_PERIOD_MS=100`).
pub async fn start_tick_reminders(http: &reqwest::Client, base: &str, grains: usize) {
    for g in 0..grains {
        let args = r#"{"name":"tick","due_ms":100,"period_ms":100}"#;
        let (status, body) = post(http, base, &format!("probe/r{g}"), "start_reminder", args).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// The `granary` binary built by `cargo xtask test` (or `GRANARY_BIN`).
pub fn granary_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("GRANARY_BIN") {
        return PathBuf::from(bin);
    }
    let bin = workspace_root().join("target/debug/granary");
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build -p granary` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A `granary serve` child process on 127.0.0.1:0 with its log in `<data>/../silo.log`.
pub struct ChildSilo {
    child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl ChildSilo {
    /// Starts `granary serve` and waits until `/readyz` answers 200.
    pub fn spawn(grains: &Path, data: &Path, env: &[(&str, &str)]) -> Self {
        let silo = Self::spawn_unready(grains, data, env);
        silo.wait_ready(Duration::from_secs(60));
        silo
    }

    /// Starts `granary serve` and returns once it listens (it may not be ready yet).
    pub fn spawn_unready(grains: &Path, data: &Path, env: &[(&str, &str)]) -> Self {
        let log = data.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut cmd = Command::new(granary_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--grains"])
            .arg(grains)
            .arg("--data")
            .arg(data)
            .env("GRANARY_CACHE_DIR", shared_cache_dir())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning granary serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("granary: listening on ") {
                        break url.trim().to_owned();
                    }
                }
                _ => panic!(
                    "granary serve exited before listening; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, base, log }
    }

    /// Polls `/readyz` until it answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.status("/readyz") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("silo never became ready; log:\n{}", self.log_text());
    }

    /// The status of a GET, with a plain blocking socket (usable from any thread).
    pub fn status(&self, path: &str) -> Option<u16> {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGKILL: no drain, no flush; only what was acknowledged must survive.
    pub fn kill9(mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildSilo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
