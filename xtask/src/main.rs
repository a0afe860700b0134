//! Build orchestration for Granary: `cargo xtask build | demo | test | bench | soak`.
//!
//! Everything shares the workspace `target/` directory; the guest components are built once
//! per invocation and copied to `target/grains/<kind>.wasm` (examples) and
//! `target/test-grains/<kind>.wasm` (test fixtures).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod deploy;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the example grains (wasm32-wasip2) and the release `granary` binary.
    Build,
    /// Build, then serve the examples on 127.0.0.1:8080 with data in ./data.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        #[arg(long, default_value = "data")]
        data: PathBuf,
    },
    /// Build the grains once, then run fmt check, clippy and every test.
    Test,
    /// Build the grains, then run the benchmark (release) beside its floors.
    Bench {
        /// Reduced run (under 2 minutes); exits non-zero when a figure misses its target by
        /// more than 25 %.
        #[arg(long)]
        quick: bool,
    },
    /// Build the grains and the host, then run the crash-loop soak (kill -9 and verify).
    Soak {
        /// Kill/restart/verify rounds (CI runs 3 as part of `test`).
        #[arg(long, default_value_t = 200)]
        rounds: u32,
    },
}

/// Guest crates: (directory, destination folder under target/).
const GUEST_DIRS: &[(&str, &str)] = &[("examples", "grains"), ("tests/grains", "test-grains")];

fn main() -> std::process::ExitCode {
    match run_task() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task() -> anyhow::Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match Cli::parse().command {
        Task::Build => {
            build_guests(&root)?;
            build_host_release()?;
        }
        Task::Demo { listen, data } => demo(&root, &listen, &data)?,
        Task::Test => test(&root)?,
        Task::Bench { quick } => bench(&root, quick)?,
        Task::Soak { rounds } => soak(&root, rounds)?,
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn step(name: &str) -> Instant {
    eprintln!("==> {name}");
    Instant::now()
}

fn done(started: Instant) {
    eprintln!("    done in {:.1}s", started.elapsed().as_secs_f64());
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Installs the wasm32-wasip2 target through rustup when it is missing.
fn ensure_wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup (Granary's set-up needs rustup)")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return Ok(());
    }
    let started = step("installing the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
    run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))?;
    done(started);
    Ok(())
}

/// (crate name, destination folder) of every guest crate.
fn guest_crates(root: &Path) -> anyhow::Result<Vec<(String, &'static str)>> {
    let mut crates = Vec::new();
    for (dir, dest) in GUEST_DIRS {
        let mut names: Vec<String> = std::fs::read_dir(root.join(dir))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("Cargo.toml").is_file())
            .filter_map(|e| package_name(&e.path().join("Cargo.toml")))
            .collect();
        names.sort();
        crates.extend(names.into_iter().map(|n| (n, *dest)));
    }
    Ok(crates)
}

fn package_name(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let package = text.split("[package]").nth(1)?;
    package.lines().find_map(|l| {
        let value = l.trim().strip_prefix("name")?.trim().strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

fn build_guests(root: &Path) -> anyhow::Result<()> {
    ensure_wasm_target()?;
    let crates = guest_crates(root)?;
    let started = step(&format!(
        "building {} grains for wasm32-wasip2: {}",
        crates.len(),
        crates
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut cmd = cargo();
    cmd.args(["build", "--target", "wasm32-wasip2", "--profile", "guest"]);
    for (name, _) in &crates {
        cmd.args(["-p", name]);
    }
    run(&mut cmd)?;
    let out = root.join("target/wasm32-wasip2/guest");
    for (name, dest) in &crates {
        let from = out.join(format!("{}.wasm", name.replace('-', "_")));
        let dir = root.join("target").join(dest);
        std::fs::create_dir_all(&dir)?;
        let to = dir.join(format!("{name}.wasm"));
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        let size = std::fs::metadata(&to)?.len();
        eprintln!("    {} ({} KiB)", to.display(), size / 1024);
    }
    done(started);
    Ok(())
}

fn build_host_release() -> anyhow::Result<()> {
    let started = step("building target/release/granary");
    run(cargo().args(["build", "--release", "-p", "granary"]))?;
    done(started);
    Ok(())
}

fn demo(root: &Path, listen: &str, data: &Path) -> anyhow::Result<()> {
    build_guests(root)?;
    build_host_release()?;
    std::fs::create_dir_all(data)?;
    let base = format!("http://{listen}");
    let granary = root.join("target/release/granary");
    let g = granary.display();
    eprintln!();
    eprintln!(
        "Serving the example grains on {base} (data in {}). Try, in another terminal:",
        data.display()
    );
    eprintln!();
    eprintln!("  {g} call counter/alice increment 5 --addr {base}");
    eprintln!("  {g} call counter/alice get --addr {base}");
    eprintln!("  {g} call ledger/alice deposit 100 --addr {base}");
    eprintln!("  {g} call ledger/alice transfer '{{\"to\":\"bob\",\"amount\":30}}' --addr {base}");
    eprintln!("  {g} call ledger/bob balance --addr {base}");
    eprintln!(
        "  {g} call sync-worker/reports start '{{\"every_ms\":2000,\"keepalive_secs\":60}}' --addr {base}"
    );
    eprintln!("  {g} call sync-worker/reports status --addr {base}");
    eprintln!("  {g} reminders sync-worker/reports --addr {base}");
    eprintln!("  {g} kinds --addr {base}");
    eprintln!("  curl -s -X POST {base}/v1/grains/counter/alice/increment -d 1");
    eprintln!("  curl -s {base}/metrics | grep granary_calls");
    eprintln!();
    eprintln!("Ctrl-C drains the silo and exits.");
    eprintln!();
    run(Command::new(&granary).args([
        "serve",
        "--grains",
        "target/grains",
        "--data",
        &data.display().to_string(),
        "--listen",
        listen,
    ]))
}

/// The table goes to stdout, progress to stderr, the JSON to target/bench/latest.json.
fn bench(root: &Path, quick: bool) -> anyhow::Result<()> {
    build_guests(root)?;
    let started = step("cargo run --release -p granary-bench");
    let mut cmd = cargo();
    cmd.args(["run", "--release", "-p", "granary-bench", "--"]);
    if quick {
        cmd.arg("--quick");
    }
    run(&mut cmd)?;
    done(started);
    Ok(())
}

/// Prints `soak: rounds=R kills=K writes_verified=W lost=0` (see RELIABILITY.md).
fn soak(root: &Path, rounds: u32) -> anyhow::Result<()> {
    build_guests(root)?;
    let started = step("cargo build -p granary");
    run(cargo().args(["build", "-p", "granary"]))?;
    done(started);
    let started = step(&format!("soak: {rounds} rounds"));
    let mut cmd = cargo();
    cmd.args(["test", "-p", "granary-tests", "--test", "all", "soak"])
        .args(["--", "--nocapture"])
        .env("GRANARY_SOAK_ROUNDS", rounds.to_string())
        .env("GRANARY_BIN", root.join("target/debug/granary"));
    run(&mut cmd)?;
    done(started);
    Ok(())
}

fn test(root: &Path) -> anyhow::Result<()> {
    let started = step("cargo fmt --all --check");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    done(started);
    build_guests(root)?;
    let started = step("cargo clippy --workspace --all-targets -- -D warnings");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    done(started);
    // The crash tests run the real binary as a child process: build it (debug, the same
    // artifacts `cargo test` uses) before the tests start.
    let started = step("cargo build -p granary");
    run(cargo().args(["build", "-p", "granary"]))?;
    done(started);
    // tests/tests/deploy.rs validates deploy/ with tools from PyPI.
    let pytools = deploy::install_tools(root)?;
    let started = step("cargo test --workspace");
    run(cargo()
        .args(["test", "--workspace"])
        .env("GRANARY_BIN", root.join("target/debug/granary"))
        .env("GRANARY_PYTOOLS", pytools))?;
    done(started);
    Ok(())
}
