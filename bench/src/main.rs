//! `cargo xtask bench [--quick]`: Granary's performance figures, each beside a floor
//! measured in the same run on the same machine, with the ratio and the target.
//!
//! Every row runs in its own child process (this binary with `--row NAME`), so memory
//! readings start from a clean process and one row cannot disturb the next. Progress goes
//! to stderr; the Markdown table goes to stdout and the same figures, as JSON, to
//! `target/bench/latest.json`. With `--quick` (a reduced run, under two minutes) the exit
//! code is 1 when a figure misses its target by more than 25 %.

mod common;
mod report;
mod rows;

use std::process::ExitCode;
use std::time::Instant;

use common::{Opts, bench_dir, max_map_count};
use report::{Figure, Verdict};

/// `vm.max_map_count` on a stock kernel, and what rows that need more raise it to.
const DEFAULT_MAP_COUNT: u64 = 65_530;
const RAISED_MAP_COUNT: u64 = 1_048_576;
/// Share of the machine's CPU used by other processes above which a row is flagged.
const BUSY: f64 = 0.10;

/// What a row needs of `vm.max_map_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Maps {
    /// Whatever the machine has.
    Any,
    /// Raised (as root) when the row's grain count exceeds what the default allows.
    Raise { quick: bool, full: bool },
    /// The stock default (set as root if the machine differs).
    Default,
}

struct RowSpec {
    name: &'static str,
    title: &'static str,
    maps: Maps,
}

const ROWS: &[RowSpec] = &[
    RowSpec {
        name: "call",
        title: "in-process grain call vs raw wasmtime call",
        maps: Maps::Any,
    },
    RowSpec {
        name: "activation",
        title: "cold activation vs raw instantiate",
        maps: Maps::Any,
    },
    RowSpec {
        name: "durable",
        title: "durable write turns vs sled group commit",
        maps: Maps::Any,
    },
    RowSpec {
        name: "http",
        title: "HTTP gateway vs bare axum",
        maps: Maps::Any,
    },
    RowSpec {
        name: "timers",
        title: "timer-driven guest calls",
        maps: Maps::Raise {
            quick: true,
            full: true,
        },
    },
    RowSpec {
        name: "memory",
        title: "resident memory per idle activation",
        maps: Maps::Raise {
            quick: false,
            full: true,
        },
    },
    RowSpec {
        name: "capacity",
        title: "live activations under the default vm.max_map_count",
        maps: Maps::Default,
    },
    RowSpec {
        name: "drain",
        title: "drain of active grains",
        maps: Maps::Raise {
            quick: true,
            full: true,
        },
    },
    RowSpec {
        name: "reminders",
        title: "durable reminders",
        maps: Maps::Any,
    },
    RowSpec {
        name: "restart",
        title: "restart to serving with a warm compile cache",
        maps: Maps::Any,
    },
];

fn main() -> ExitCode {
    let opts = match Opts::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    match &opts.row {
        Some(row) => child(row, &opts),
        None => match orchestrate(&opts) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

/// Runs one row (or helper phase) and prints its JSON.
fn child(row: &str, opts: &Opts) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting tokio: {e}");
            return ExitCode::from(2);
        }
    };
    // The row runs as a task on the runtime's workers, like a gateway handler, not on
    // this thread: a caller outside the workers would pay a thread hop per call.
    let (row_name, row_opts) = (row.to_owned(), opts.clone());
    let result = runtime.block_on(async move {
        tokio::spawn(async move { rows::run(&row_name, &row_opts).await })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the row panicked: {e}")))
    });
    match result {
        Ok(value) => {
            println!("{value}");
            // Skip the destructors of a silo with thousands of activations: the row is done.
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("    [{row}] error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Restores `vm.max_map_count` when a row that changed it is done.
struct MapCountGuard {
    restore: Option<u64>,
}

impl MapCountGuard {
    fn set(value: u64) -> Result<Self, String> {
        let before = max_map_count().ok_or("vm.max_map_count is unreadable")?;
        if before == value {
            return Ok(Self { restore: None });
        }
        std::fs::write("/proc/sys/vm/max_map_count", value.to_string())
            .map_err(|e| format!("cannot set vm.max_map_count to {value}: {e}"))?;
        eprintln!("    vm.max_map_count set to {value} for this row (was {before})");
        Ok(Self {
            restore: Some(before),
        })
    }
}

impl Drop for MapCountGuard {
    fn drop(&mut self) {
        if let Some(before) = self.restore {
            match std::fs::write("/proc/sys/vm/max_map_count", before.to_string()) {
                Ok(()) => eprintln!("    vm.max_map_count restored to {before}"),
                Err(e) => eprintln!("    could not restore vm.max_map_count to {before}: {e}"),
            }
        }
    }
}

fn orchestrate(opts: &Opts) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let revision = revision();
    let mode = if opts.quick { "quick" } else { "full" };
    eprintln!(
        "==> granary bench ({mode}): {} rows, each in its own process",
        ROWS.len()
    );
    let exe_copy = bench_dir().join(format!("granary-bench.{}", std::process::id()));
    std::fs::create_dir_all(bench_dir())?;
    std::fs::copy(std::env::current_exe()?, &exe_copy)?;
    // SAFETY: set before any other thread of this process exists (no runtime here).
    unsafe { std::env::set_var(common::EXE_ENV, &exe_copy) };
    let mut figures: Vec<Figure> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    let mut map_notes: Vec<String> = Vec::new();
    let mut disturbed: Vec<String> = Vec::new();
    let mut failed_rows: Vec<&str> = Vec::new();
    let cpu_start = CpuClock::read();
    for (i, spec) in ROWS.iter().enumerate() {
        if let Some(only) = &opts.only
            && !only.iter().any(|o| o == spec.name)
        {
            continue;
        }
        let row_started = Instant::now();
        eprintln!("==> [{}/{}] {}", i + 1, ROWS.len(), spec.title);
        let want = match spec.maps {
            Maps::Any => None,
            Maps::Raise { quick, full } if opts.pick(quick, full) => Some(RAISED_MAP_COUNT),
            Maps::Raise { .. } => None,
            Maps::Default => Some(DEFAULT_MAP_COUNT),
        };
        let guard = match want {
            None => None,
            Some(value) => match MapCountGuard::set(value) {
                Ok(g) => Some(g),
                Err(e) => {
                    eprintln!("    {e}; the row adapts to the current limit");
                    map_notes.push(format!("{}: {e}", spec.name));
                    None
                }
            },
        };
        let cpu_before = CpuClock::read();
        let outcome = common::run_child(spec.name, opts.quick, &[]);
        let foreign = CpuClock::read().foreign_share(&cpu_before);
        drop(guard);
        if foreign > BUSY {
            eprintln!(
                "    other processes used {:.0} % of the CPU during this row",
                foreign * 100.0
            );
            disturbed.push(format!("{} ({:.0} %)", spec.name, foreign * 100.0));
        }
        match outcome {
            Ok(value) => {
                let mut row_figures: Vec<Figure> =
                    serde_json::from_value(value["figures"].clone()).unwrap_or_default();
                if foreign > BUSY
                    && let Some(f) = row_figures.first_mut()
                {
                    f.notes.push(format!(
                        "Disturbed: other processes used {:.0} % of the machine's CPU while \
                         this row ran",
                        foreign * 100.0
                    ));
                }
                let row_missing: Vec<String> =
                    serde_json::from_value(value["missing"].clone()).unwrap_or_default();
                figures.extend(row_figures);
                missing.extend(row_missing);
            }
            Err(e) => {
                eprintln!("    row {} failed: {e:#}", spec.name);
                failed_rows.push(spec.name);
                missing.push(format!(
                    "{} ({}): the row failed: {e:#}",
                    spec.title, spec.name
                ));
            }
        }
        eprintln!("    done in {:.1}s", row_started.elapsed().as_secs_f64());
    }
    let foreign = CpuClock::read().foreign_share(&cpu_start);
    let _ = std::fs::remove_file(&exe_copy);
    let table = report::markdown(&figures, &missing);
    let machine = machine();
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    println!(
        "Granary bench ({mode}), {date}, {} (release build), at {revision}\n",
        machine["summary"].as_str().unwrap_or("")
    );
    if disturbed.is_empty() {
        println!(
            "Other processes used {:.0} % of the CPU during the run.\n",
            foreign * 100.0
        );
    } else {
        println!(
            "**Disturbed run:** other processes used {:.0} % of the CPU overall, more than \
             {:.0} % during: {}.\n",
            foreign * 100.0,
            BUSY * 100.0,
            disturbed.join(", ")
        );
    }
    println!("{table}");
    for note in &map_notes {
        println!("vm.max_map_count: {note}");
    }
    let missed: Vec<&Figure> = figures
        .iter()
        .filter(|f| f.verdict == Some(Verdict::Missed))
        .collect();
    let json = serde_json::json!({
        "date": date,
        "mode": mode,
        "revision": revision,
        "machine": machine,
        "seconds": started.elapsed().as_secs_f64(),
        "figures": figures,
        "not_measured": missing,
        "max_map_count_notes": map_notes,
        "foreign_cpu_share": foreign,
        "disturbed_rows": disturbed,
    });
    std::fs::create_dir_all(bench_dir())?;
    let path = bench_dir().join("latest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")?;
    eprintln!(
        "==> bench finished in {:.1}s; JSON in {}",
        started.elapsed().as_secs_f64(),
        path.display()
    );
    if !failed_rows.is_empty() {
        eprintln!("    rows that failed to run: {}", failed_rows.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    if opts.quick && !missed.is_empty() {
        for f in &missed {
            eprintln!("    missed its target by more than 25 %: {}", f.figure);
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// CPU time of the whole machine and of this process with its finished children, in
/// USER_HZ ticks (100 per second on Linux), to tell how much other work ran beside a row.
#[derive(Debug, Clone, Copy)]
struct CpuClock {
    at: Instant,
    machine_busy: u64,
    ours: u64,
}

impl CpuClock {
    fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let machine_busy = stat
            .lines()
            .next()
            .map(|l| {
                let f: Vec<u64> = l
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal
                [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum()
            })
            .unwrap_or(0);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name: utime, stime, cutime, cstime are 14..=17.
        let after_comm = own.rsplit_once(')').map_or("", |(_, rest)| rest);
        let f: Vec<u64> = after_comm
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let ours = f.get(10..14).map_or(0, |t| t.iter().sum());
        Self {
            at: Instant::now(),
            machine_busy,
            ours,
        }
    }

    /// Share of the machine's CPU capacity used by other processes since `earlier`.
    fn foreign_share(&self, earlier: &CpuClock) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let capacity = (self.at - earlier.at).as_secs_f64() * 100.0 * cores;
        let busy = self.machine_busy.saturating_sub(earlier.machine_busy) as f64;
        let ours = self.ours.saturating_sub(earlier.ours) as f64;
        ((busy - ours) / capacity).max(0.0)
    }
}

/// The commit measured, and whether the host had uncommitted changes.
fn revision() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(common::workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "host", "guest-sdk", "examples"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit} + uncommitted changes to the host, SDK or examples")
            } else {
                commit
            }
        }
        None => "unknown revision".into(),
    }
}

/// Cores, CPU model, memory and kernel of this machine.
fn machine() -> serde_json::Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map_or("unknown CPU".to_owned(), |s| s.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|s| s.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    serde_json::json!({
        "cores": cores,
        "cpu": cpu,
        "memory_gib": (mem_gib * 10.0).round() / 10.0,
        "kernel": kernel,
        "vm_max_map_count": max_map_count(),
        "summary": format!("{cores} cores ({cpu}), {mem_gib:.0} GiB, Linux {kernel}"),
    })
}
