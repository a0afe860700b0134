//! `granary dev PATH`: the grain author's inner loop. Builds the grain crate at `PATH`
//! (`cargo build --release --target wasm32-wasip2`; the kind is the package name), serves
//! it from an in-process silo (a temporary grains directory, a temporary data directory
//! unless `--data` is given), then polls `src/` and `Cargo.toml` every 500 ms and, on a
//! change, rebuilds and redeploys with `PUT /v1/kinds/{kind}` on the running silo: new
//! activations use the new version, live ones deactivate (`upgrade`) and reactivate on
//! their next message, from the committed state. A build that fails, or a component the
//! silo refuses, leaves the last good version serving.
//!
//! Stdout carries one line per rebuild, the ready-to-paste `granary call` lines, and the
//! same `granary: listening on http://ADDR` line as `serve` (printed last, once the silo
//! serves); cargo's output and the silo log go to stderr.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::grain_id::validate_kind;
use crate::scaffold::package_name;
use crate::silo::{RunningSilo, Silo};

mod hints;

pub use hints::{Method, call_lines, client_addr, grain_methods};

/// How often the sources are checked for changes.
const POLL: Duration = Duration::from_millis(500);
const WASM_TARGET: &str = "wasm32-wasip2";

/// `granary dev [PATH] [--data DIR] [--listen ADDR]`
#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// The grain crate: a directory with a `Cargo.toml` whose package name is the kind.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Data directory (default: a temporary one, removed on exit).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Address of the HTTP gateway (default 127.0.0.1:8080; port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// The crate being developed.
#[derive(Debug, Clone)]
pub struct GrainCrate {
    /// Absolute directory of the crate.
    pub dir: PathBuf,
    pub manifest: PathBuf,
    /// The package name, which is the kind.
    pub kind: String,
}

impl GrainCrate {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let dir = path
            .canonicalize()
            .with_context(|| format!("grain crate {}", path.display()))?;
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            bail!(
                "{} has no Cargo.toml: pass the directory of a grain crate (`granary new NAME` \
                 creates one)",
                dir.display()
            );
        }
        let kind = package_name(&manifest)
            .with_context(|| format!("{} has no [package] name", manifest.display()))?;
        validate_kind(&kind).with_context(|| {
            format!(
                "the package name of {} is the grain's kind (the silo loads <kind>.wasm); \
                 rename the package",
                manifest.display()
            )
        })?;
        Ok(Self {
            dir,
            manifest,
            kind,
        })
    }

    /// The mtime and size of `Cargo.toml` and of every file under `src/`; a change means
    /// a rebuild. Hidden files and editor backups (`~`) are ignored.
    pub fn fingerprint(&self) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
        let mut files = Vec::new();
        stat_into(&self.manifest, &mut files);
        walk(&self.dir.join("src"), &mut files);
        files.sort();
        files
    }

    /// `cargo build --release --target wasm32-wasip2` in the crate; returns the component's
    /// path. Compiler output goes to stderr. `running` holds the cargo process while it
    /// runs, so a signal can stop it.
    fn build(&self, running: &Mutex<Option<Child>>) -> anyhow::Result<PathBuf> {
        let mut child = Command::new("cargo")
            .args(["build", "--release", "--target", WASM_TARGET])
            .args(["--message-format", "json-render-diagnostics"])
            .arg("--manifest-path")
            .arg(&self.manifest)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running cargo (is it on PATH?)")?;
        let stdout = child.stdout.take().context("cargo's stdout")?;
        *lock(running) = Some(child);
        let mut wasm = None;
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if let Some(path) = self.artifact(&line) {
                wasm = Some(path);
            }
        }
        let status = match lock(running).take() {
            Some(mut child) => child.wait().context("waiting for cargo")?,
            None => bail!("cargo was stopped"),
        };
        if !status.success() {
            bail!("cargo build failed ({status})");
        }
        wasm.with_context(|| {
            format!(
                "cargo built no .wasm for {}: is the crate a `cdylib` (`[lib] crate-type = \
                 [\"cdylib\", \"rlib\"]`)?",
                self.kind
            )
        })
    }

    /// The `.wasm` file of a `compiler-artifact` message about this package.
    fn artifact(&self, line: &str) -> Option<PathBuf> {
        let message: serde_json::Value = serde_json::from_str(line).ok()?;
        if message.get("reason")?.as_str()? != "compiler-artifact" {
            return None;
        }
        let manifest = Path::new(message.get("manifest_path")?.as_str()?);
        if manifest.canonicalize().ok()? != self.manifest {
            return None;
        }
        message
            .get("filenames")?
            .as_array()?
            .iter()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"))
            .map(PathBuf::from)
    }

    /// The grain's messages, read from `src/lib.rs` (for the `granary call` hints).
    fn methods(&self) -> Vec<Method> {
        std::fs::read_to_string(self.dir.join("src/lib.rs"))
            .map(|src| grain_methods(&src))
            .unwrap_or_default()
    }
}

fn stat_into(path: &Path, files: &mut Vec<(PathBuf, Option<SystemTime>, u64)>) {
    if let Ok(meta) = std::fs::metadata(path) {
        files.push((path.to_path_buf(), meta.modified().ok(), meta.len()));
    }
}

fn walk(dir: &Path, files: &mut Vec<(PathBuf, Option<SystemTime>, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, files),
            Ok(_) => stat_into(&path, files),
            Err(_) => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails early, with the fix, when the wasm32-wasip2 target is not installed.
fn check_wasm_target(dir: &Path) -> anyhow::Result<()> {
    let Ok(output) = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(dir)
        .output()
    else {
        return Ok(()); // cargo will say what is wrong
    };
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success()
        && !Path::new(&sysroot)
            .join("lib/rustlib")
            .join(WASM_TARGET)
            .is_dir()
    {
        bail!(
            "the {WASM_TARGET} target is not installed for this toolchain: run `rustup target \
             add {WASM_TARGET}`"
        );
    }
    Ok(())
}

/// First 16 hex digits of the SHA-256, as the silo names versions.
fn version_of(wasm: &[u8]) -> String {
    Sha256::digest(wasm)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A directory under the system temp dir, removed (with its contents) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> anyhow::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("granary-dev-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("creating temporary directory {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SIGTERM and SIGINT (Ctrl-C), registered once so none is missed between waits.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn recv(&mut self) -> &'static str {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.term) => "SIGTERM",
            _ = next(&mut self.int) => "SIGINT",
        }
    }
}

/// The dev session: the crate, the running silo and what it serves.
struct Session {
    grain: GrainCrate,
    running: RunningSilo,
    /// The version serving now, if a build ever succeeded.
    serving: Option<String>,
    methods: Vec<Method>,
    http: reqwest::Client,
    cargo: Arc<Mutex<Option<Child>>>,
    signals: Signals,
}

/// What ended a wait.
enum Interrupt {
    Signal(&'static str),
    DrainRequested,
}

/// `granary dev`.
pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let grain = GrainCrate::open(&args.path)?;
    check_wasm_target(&grain.dir)?;
    let mut config = Config::load(None, std::env::vars())?;
    let work = TempDir::create()?;
    config.grains_dir = work.0.join("grains");
    std::fs::create_dir(&config.grains_dir)?;
    config.data_dir = args.data.clone().unwrap_or_else(|| work.0.join("data"));
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    crate::cli::init_logging(config.log_format);
    // Bind first: a busy port fails before a long build.
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("binding {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    config.listen = addr;

    let cargo = Arc::new(Mutex::new(None));
    let mut signals = Signals::new();
    println!(
        "granary dev: building {} ({})",
        grain.kind,
        grain.dir.display()
    );
    let first = tokio::select! {
        built = build(&grain, &cargo) => built,
        trigger = signals.recv() => {
            stop_cargo(&cargo);
            println!("granary dev: {trigger} while building; exiting");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let serving = match first {
        Ok((wasm, took)) => {
            let file = config.grains_dir.join(format!("{}.wasm", grain.kind));
            std::fs::write(&file, &wasm).with_context(|| format!("writing {}", file.display()))?;
            println!(
                "granary dev: built {} in {:.1}s ({} KiB)",
                grain.kind,
                took.as_secs_f64(),
                wasm.len() / 1024
            );
            Some(version_of(&wasm))
        }
        Err(e) => {
            println!(
                "granary dev: build failed: {e:#}; serving without {} until it builds",
                grain.kind
            );
            None
        }
    };
    let silo = tokio::task::spawn_blocking(move || Silo::open(config)).await??;
    if serving.is_some() && silo.kinds.get(&grain.kind).is_none() {
        println!(
            "granary dev: the silo refused {}.wasm (the reason is in the log above); fix the \
             crate, it is rebuilt on every change",
            grain.kind
        );
    }
    let serving = serving.filter(|_| silo.kinds.get(&grain.kind).is_some());
    let running = RunningSilo::start_on(silo, tokio::net::TcpListener::from_std(listener)?).await?;
    let mut session = Session {
        methods: grain.methods(),
        grain,
        running,
        serving,
        http: reqwest::Client::new(),
        cargo,
        signals,
    };
    session.print_calls();
    // Last, as `serve` prints it: scripts wait for this line (and learn the port from it).
    println!("granary: listening on http://{addr}");
    let outcome = session.watch().await;
    match &outcome {
        Interrupt::Signal(trigger) => println!("granary dev: {trigger}: draining"),
        Interrupt::DrainRequested => println!("granary dev: drain requested: draining"),
    }
    let ok = session.running.shutdown().await;
    drop(work);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Builds on a blocking thread; returns the component's bytes and the build's duration.
async fn build(
    grain: &GrainCrate,
    cargo: &Arc<Mutex<Option<Child>>>,
) -> anyhow::Result<(Vec<u8>, Duration)> {
    let grain = grain.clone();
    let cargo = cargo.clone();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let path = grain.build(&cargo)?;
        let wasm = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok((wasm, started.elapsed()))
    })
    .await?
}

fn stop_cargo(cargo: &Mutex<Option<Child>>) {
    if let Some(child) = lock(cargo).as_mut() {
        let _ = child.kill();
    }
}

impl Session {
    fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    fn print_calls(&self) {
        let lines = call_lines(&self.grain.kind, &self.methods, self.addr());
        if lines.is_empty() {
            println!(
                "granary dev: call it with granary call {}/KEY METHOD [JSON] --addr http://{}",
                self.grain.kind,
                client_addr(self.addr())
            );
            return;
        }
        println!("granary dev: try, in another terminal:");
        for line in lines {
            println!("  {line}");
        }
    }

    /// Polls the sources until a signal or a drain request; rebuilds on every change.
    async fn watch(&mut self) -> Interrupt {
        let mut seen = self.grain.fingerprint();
        let mut ticks = tokio::time::interval(POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let drain = self.running.silo.lifecycle.drain_requested.clone();
            tokio::select! {
                trigger = self.signals.recv() => return Interrupt::Signal(trigger),
                _ = drain.cancelled() => return Interrupt::DrainRequested,
                _ = ticks.tick() => {}
            }
            let now = self.grain.fingerprint();
            if now == seen {
                continue;
            }
            seen = now;
            let started = Instant::now();
            let built = tokio::select! {
                built = build(&self.grain, &self.cargo) => built,
                trigger = self.signals.recv() => {
                    stop_cargo(&self.cargo);
                    return Interrupt::Signal(trigger);
                }
            };
            // Changes made during the build are picked up by the next poll.
            match built {
                Ok((wasm, _)) => self.redeploy(wasm, started).await,
                Err(e) => println!(
                    "granary dev: build failed after {:.1}s ({e:#}; compiler output above); {}",
                    started.elapsed().as_secs_f64(),
                    self.still_serving()
                ),
            }
        }
    }

    fn still_serving(&self) -> String {
        match &self.serving {
            Some(version) => format!("still serving version {version}"),
            None => format!("{} is not served yet", self.grain.kind),
        }
    }

    async fn redeploy(&mut self, wasm: Vec<u8>, started: Instant) {
        let took = started.elapsed().as_secs_f64();
        let version = version_of(&wasm);
        if self.serving.as_deref() == Some(version.as_str()) {
            println!("granary dev: rebuilt in {took:.1}s: unchanged (version {version})");
            return;
        }
        match self.put_kind(wasm).await {
            Ok(upgraded) => {
                println!(
                    "granary dev: rebuilt in {took:.1}s: deployed version {version} \
                     ({upgraded} live activation(s) upgraded)"
                );
                self.serving = Some(version);
                let methods = self.grain.methods();
                if methods != self.methods {
                    self.methods = methods;
                    self.print_calls();
                }
            }
            Err(e) => println!(
                "granary dev: rebuilt in {took:.1}s, but the silo refused it: {e}; {}",
                self.still_serving()
            ),
        }
    }

    /// `PUT /v1/kinds/{kind}` on the running silo; returns how many live activations were
    /// upgraded. Without the admin token's blessing (a non-loopback listen address and no
    /// token) it deploys through the library call behind that route instead.
    async fn put_kind(&self, wasm: Vec<u8>) -> Result<u64, String> {
        let silo = &self.running.silo;
        let url = format!(
            "http://{}/v1/kinds/{}",
            client_addr(self.addr()),
            self.grain.kind
        );
        let mut request = self.http.put(&url).body(wasm.clone());
        if let Some(token) = &silo.config.admin_token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("PUT {url}: {e}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if status.is_success() {
            return Ok(body["upgraded"].as_u64().unwrap_or(0));
        }
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            let silo = silo.clone();
            let kind = self.grain.kind.clone();
            return tokio::task::spawn_blocking(move || silo.deploy(&kind, &wasm))
                .await
                .map_err(|e| e.to_string())?
                .map(|d| d.upgraded as u64)
                .map_err(|e| e.to_string());
        }
        let message = body["message"].as_str().map_or(text.clone(), str::to_owned);
        Err(format!("{status}: {message}"))
    }
}
