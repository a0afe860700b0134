//! What every row needs: options, scratch directories, a silo, raw instances (the floors),
//! process memory readings, latency statistics and child processes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use granary::message::CallChain;
use granary::runtime::bindings::Grain;
use granary::runtime::{GrainHost, Turn};
use granary::{CallError, Config, GrainId, Silo};
use wasmtime::{Store, UpdateDeadline};

/// Command-line options of the bench binary (also passed to row processes).
#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub quick: bool,
    /// Run one row (or a helper phase) in this process and print its JSON on stdout.
    pub row: Option<String>,
    /// Data directory of a reminders phase.
    pub data: Option<PathBuf>,
    /// Reminders stored by a populate phase.
    pub stored: u64,
    /// Of which due now and firing every 100 ms.
    pub hot: u64,
    /// Grain count of a helper phase.
    pub n: usize,
    /// Run only these rows (comma-separated names), for working on one row.
    pub only: Option<Vec<String>>,
}

impl Opts {
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut opts = Opts::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value =
                |name: &str| args.next().with_context(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--quick" => opts.quick = true,
                "--row" => opts.row = Some(value("--row")?),
                "--data" => opts.data = Some(PathBuf::from(value("--data")?)),
                "--stored" => opts.stored = value("--stored")?.parse()?,
                "--hot" => opts.hot = value("--hot")?.parse()?,
                "--n" => opts.n = value("--n")?.parse()?,
                "--only" => {
                    opts.only = Some(value("--only")?.split(',').map(str::to_owned).collect())
                }
                "-h" | "--help" => {
                    println!(
                        "granary-bench [--quick] [--only ROW,ROW]   (run through `cargo xtask bench`)\n\
                         rows: call activation durable http timers memory capacity drain reminders"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}"),
            }
        }
        Ok(opts)
    }

    /// `quick` in a quick run, else `full`.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }

    pub fn secs(&self, quick: f64, full: f64) -> Duration {
        Duration::from_secs_f64(self.pick(quick, full))
    }
}

/// Progress on stderr, prefixed with the row.
pub fn progress(row: &str, message: impl AsRef<str>) {
    eprintln!("    [{row}] {}", message.as_ref());
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ lives in the workspace root")
        .to_path_buf()
}

pub fn bench_dir() -> PathBuf {
    workspace_root().join("target/bench")
}

/// A compiled component from `cargo xtask build`.
pub fn component(kind: &str) -> anyhow::Result<PathBuf> {
    let target = workspace_root().join("target");
    for dir in ["grains", "test-grains"] {
        let path = target.join(dir).join(format!("{kind}.wasm"));
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!(
        "{kind}.wasm not found under target/grains or target/test-grains: run `cargo xtask bench`"
    )
}

/// A scratch directory on the workspace's disk (not tmpfs, so flushes are real), with a
/// grains directory holding copies of the given kinds; removed when dropped.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(row: &str, kinds: &[&str]) -> anyhow::Result<Self> {
        let base = bench_dir().join("tmp");
        std::fs::create_dir_all(&base)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{row}-"))
            .tempdir_in(&base)?;
        let grains = dir.path().join("grains");
        std::fs::create_dir(&grains)?;
        for kind in kinds {
            std::fs::copy(component(kind)?, grains.join(format!("{kind}.wasm")))?;
        }
        Ok(Self { dir })
    }

    pub fn grains(&self) -> PathBuf {
        self.dir.path().join("grains")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The configuration of a silo in this scratch directory (data in `data/`).
    pub fn config(&self) -> Config {
        config(&self.grains(), &self.path("data"))
    }
}

pub fn config(grains: &Path, data: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("an address"),
        grains_dir: grains.to_path_buf(),
        data_dir: data.to_path_buf(),
        cache_dir: Some(bench_dir().join("compile-cache")),
        idle_timeout_ms: 3_600_000,
        call_timeout_ms: 60_000,
        ..Config::default()
    }
}

/// Opens a silo off the async threads (it compiles or loads components).
pub async fn open_silo(config: Config) -> anyhow::Result<Arc<Silo>> {
    tokio::task::spawn_blocking(move || Silo::open(config)).await?
}

pub fn grain(kind: &str, key: &str) -> GrainId {
    GrainId::parse(kind, key).expect("a valid grain id")
}

/// `Silo::call` with a generous deadline and no call chain.
pub async fn call(
    silo: &Arc<Silo>,
    kind: &str,
    key: &str,
    method: &str,
    payload: &[u8],
) -> Result<Vec<u8>, CallError> {
    silo.call(
        grain(kind, key),
        method.to_owned(),
        payload.to_vec(),
        CallChain::default(),
        Instant::now() + Duration::from_secs(60),
    )
    .await
}

/// A grain instance in a store of our own: the floor. It uses the silo's engine (same
/// configuration: pooling allocator, epoch interruption, bounds-checked memories) and the
/// silo's pre-linked `InstancePre`, with the same store set-up as an activation (memory
/// limiter, epoch deadline callback), and nothing else: no task, no mailbox, no catalog,
/// no storage.
pub struct Raw {
    pub store: Store<GrainHost>,
    pub grain: Grain,
}

impl Raw {
    /// `Store::new` + `InstancePre::instantiate_async`.
    pub async fn new(silo: &Arc<Silo>, kind: &str, key: &str) -> anyhow::Result<Self> {
        let pre = silo
            .kinds
            .get(kind)
            .with_context(|| format!("kind {kind} is not loaded"))?;
        let host = GrainHost::new(
            silo.clone(),
            grain(kind, key),
            silo.config.memory_limit(kind),
        );
        let mut store = Store::new(&silo.runtime.engine, host);
        store.limiter(|host| &mut host.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().turn.deadline {
                Err(wasmtime::Error::msg("turn deadline exceeded"))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.data_mut().turn = Turn::new(CallChain::default(), far_future());
        let grain = pre.pre.instantiate_async(&mut store).await?;
        Ok(Self { store, grain })
    }

    pub async fn activate(&mut self, state: Option<&[u8]>) -> anyhow::Result<()> {
        self.grain
            .call_activate(&mut self.store, state)
            .await?
            .map_err(|e| anyhow::anyhow!("activate failed: {e}"))
    }

    pub async fn handle(&mut self, method: &str, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.grain
            .call_handle(&mut self.store, method, payload)
            .await?
            .map_err(|e| anyhow::anyhow!("{method} failed: {e:?}"))
    }
}

pub fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .unwrap_or(0)
}

pub fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

/// Proportional set size: resident pages, each shared page divided among the mappings
/// that share it. Copy-on-write memory images are mapped once per instance but resident
/// once, so this, not `VmRSS`, is what an activation costs.
pub fn pss_kib() -> u64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    rollup
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("Pss:")?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .unwrap_or(0)
}

/// Lines of `/proc/self/maps`: the memory mappings `vm.max_map_count` limits.
pub fn maps_count() -> u64 {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count() as u64)
        .unwrap_or(0)
}

pub fn max_map_count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Latencies in nanoseconds.
#[derive(Debug, Default)]
pub struct Latencies(pub Vec<u64>);

impl Latencies {
    pub fn push(&mut self, started: Instant) {
        self.0.push(started.elapsed().as_nanos() as u64);
    }

    /// The `p`-th percentile (0..=100) in microseconds.
    pub fn percentile_us(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let i = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[i] as f64 / 1000.0
    }

    pub fn mean_us(&self) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.iter().sum::<u64>() as f64 / self.0.len() as f64 / 1000.0
    }
}

/// Outcome of running a task for many indices at once.
#[derive(Debug, Default)]
pub struct Batch {
    pub failed: u64,
    pub first_error: Option<String>,
}

/// Runs `work(i)` for `i in 0..n` on `workers` concurrent tasks.
pub async fn for_each_concurrent<F, Fut, E>(n: usize, workers: usize, work: F) -> Batch
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (work, next, failed, first_error) = (
            work.clone(),
            next.clone(),
            failed.clone(),
            first_error.clone(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if let Err(e) = work(i).await {
                    let mut first = first_error.lock().expect("not poisoned");
                    first.get_or_insert_with(|| e.to_string());
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let first_error = first_error.lock().expect("not poisoned").take();
    Batch {
        failed: failed.load(Ordering::Relaxed),
        first_error,
    }
}

/// Names the copy of this binary that row processes run (see [`run_child`]).
pub const EXE_ENV: &str = "GRANARY_BENCH_EXE";

/// Runs a phase of this binary in a child process (`--row NAME ...`); its stderr is shown
/// as progress, its stdout is the JSON it returns.
pub fn run_child(row: &str, quick: bool, extra: &[String]) -> anyhow::Result<serde_json::Value> {
    // The orchestrator runs every row from its own copy of the binary, so a rebuild of
    // target/release/granary-bench during a run changes nothing.
    let exe = match std::env::var_os(EXE_ENV) {
        Some(exe) => PathBuf::from(exe),
        None => std::env::current_exe()?,
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--row", row]);
    if quick {
        cmd.arg("--quick");
    }
    cmd.args(extra);
    cmd.stderr(std::process::Stdio::inherit());
    let out = cmd.output().with_context(|| format!("running row {row}"))?;
    if !out.status.success() {
        bail!("row {row} failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "row {row} printed no JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// How many live activations a silo actually holds, as found by the `limit` phase.
#[derive(Debug)]
pub struct Limit {
    /// Activations that succeeded before the first failure (or all that were wanted).
    pub reached: usize,
    /// Why the next one failed.
    pub error: Option<String>,
}

impl Limit {
    /// `want`, or fewer (with `margin` to spare) when the silo cannot hold `want`.
    pub fn cap(&self, want: usize, margin: usize) -> usize {
        if self.reached >= want {
            want
        } else {
            self.reached.saturating_sub(margin)
        }
    }

    /// Says why a row ran with fewer grains than it wanted.
    pub fn note(&self, want: usize, used: usize) -> Option<String> {
        (used < want).then(|| {
            format!(
                "{used} grains, not {want}: a silo configured for {want} activations \
                 failed activation {} ({}) — see the capacity row",
                self.reached + 1,
                self.error.as_deref().unwrap_or("no error recorded")
            )
        })
    }
}

/// Activates up to `want` counters, one at a time, in a silo process of its own
/// configured for `want` activations, and reports how many succeeded before the first
/// failure. Rows that need many live activations size themselves with it.
pub fn live_limit(row: &str, want: usize, quick: bool) -> anyhow::Result<Limit> {
    progress(
        row,
        format!("checking that a silo holds {want} live activations"),
    );
    let v = run_child("limit", quick, &["--n".into(), want.to_string()])?;
    let limit = Limit {
        reached: v["reached"].as_u64().unwrap_or(0) as usize,
        error: v["error"].as_str().map(str::to_owned),
    };
    if limit.reached < want {
        progress(
            row,
            format!(
                "the silo held {} live activations; the next failed: {}",
                limit.reached,
                limit.error.as_deref().unwrap_or("?")
            ),
        );
    }
    Ok(limit)
}

/// The `limit` phase (see [`live_limit`]).
pub async fn limit_phase(opts: &Opts) -> anyhow::Result<serde_json::Value> {
    let want = opts.n;
    let scratch = Scratch::new("limit", &["counter"])?;
    let mut config = scratch.config();
    config.max_activations = (want + 1_000) as u32;
    let silo = open_silo(config).await?;
    let allowed = silo.runtime.capacity.max_activations as usize;
    let mut reached = 0;
    let mut error = None;
    for i in 0..want {
        if i >= allowed {
            error = Some(format!(
                "the silo lowered max_activations to {allowed} (vm.max_map_count = {})",
                silo.runtime.capacity.max_map_count.unwrap_or(0)
            ));
            break;
        }
        match call(&silo, "counter", &format!("l{i}"), "get", b"null").await {
            Ok(_) => reached += 1,
            Err(e) => {
                error = Some(format!("{e}; {}", failure_cause(&silo).await));
                break;
            }
        }
    }
    Ok(serde_json::json!({ "want": want, "reached": reached, "error": error }))
}

/// After an activation failed: what a raw instantiation in the same engine says now.
pub async fn failure_cause(silo: &Arc<Silo>) -> String {
    match Raw::new(silo, "counter", "cause").await {
        Ok(_) => "a raw instantiation right after it succeeded".into(),
        Err(e) => format!("a raw instantiation right after it failed with: {e:#}"),
    }
}

/// One mapping of `/proc/self/smaps` with its resident size.
#[derive(Debug, Clone)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    /// `rw-p`, `---p`, …
    pub perms: String,
    pub name: String,
    pub rss_kib: u64,
}

/// The mappings of `/proc/self/smaps`; with `merge`, adjacent mappings of the same backing
/// are merged into one region (a pool reserved at start-up is then one region).
fn smaps_regions(merge: bool) -> Vec<Region> {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut regions: Vec<Region> = Vec::new();
    let mut current: Option<Region> = None;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            let perms = fields.next().unwrap_or("").to_owned();
            let name = fields.nth(3).unwrap_or("").to_owned();
            if let Some(r) = current.take() {
                if merge && r.end == start && r.name == name {
                    current = Some(Region { end, ..r });
                    continue;
                }
                regions.push(r);
            }
            current = Some(Region {
                start,
                end,
                perms,
                name,
                rss_kib: 0,
            });
        } else if let Some(rest) = line.strip_prefix("Rss:")
            && let Some(r) = current.as_mut()
        {
            r.rss_kib += rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    regions.extend(current);
    regions
}

/// A reading of `/proc/self/smaps` for [`rss_breakdown`].
pub struct Snapshot {
    maps: Vec<Region>,
}

impl Snapshot {
    pub fn take() -> Self {
        Self {
            maps: smaps_regions(false),
        }
    }

    /// Resident KiB in linear memories, and elsewhere. A linear memory is the accessible
    /// start of a 64 MiB pool slot, so it is followed by the slot's inaccessible rest (a
    /// fiber stack is followed by the next stack's one-page guard), plus its copy-on-write
    /// image when it has one.
    fn split(&self) -> (i64, i64) {
        let mut linear = 0;
        let mut other = 0;
        for (i, r) in self.maps.iter().enumerate() {
            let slot_rest = self.maps.get(i + 1).is_some_and(|next| {
                next.start == r.end
                    && next.perms.starts_with("---")
                    && next.end - next.start >= 16 << 20
            });
            let image = r.name.contains("memfd:wasm-memory-image");
            if image || (r.name.is_empty() && r.perms.starts_with("rw") && slot_rest) {
                linear += r.rss_kib as i64;
            } else {
                other += r.rss_kib as i64;
            }
        }
        (linear, other)
    }
}

/// Where resident memory grew between two snapshots, per unit of `n`: guest linear
/// memories (the pages the guest touched), and everything else (the host side: store,
/// instance, tables, fiber stack, allocations, and for the silo its task and catalog).
pub fn rss_breakdown(before: &Snapshot, after: &Snapshot, n: usize) -> String {
    let (l0, o0) = before.split();
    let (l1, o1) = after.split();
    let per = |kib: i64| kib as f64 / n as f64;
    format!(
        "{:.1} KiB in guest linear memory, {:.1} KiB on the host side",
        per(l1 - l0),
        per(o1 - o0)
    )
}
