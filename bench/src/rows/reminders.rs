//! Durable reminders with many stored. A populate process writes M reminder records
//! straight into storage (`Storage::commit` of `ReminderChange::Put`, as the tests do): H
//! "hot" ones on H/5 probe grains, already due and repeating every 100 ms, and M − H
//! "cold" ones due in an hour. A second process then opens the same data (the restart)
//! and we time open → first committed tick, count committed ticks per second (each an
//! `on-reminder` turn whose next due time commits with it), and read its RSS. The floor is
//! the same pair of processes with only the H hot reminders stored (0 cold).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use granary::RunningSilo;
use granary::reminders::{MissedPolicy, ReminderChange, ReminderRecord, Schedule};
use granary::runtime::host::now_ms;
use granary::storage::TurnCommit;
use serde_json::json;

use super::RowOut;
use crate::common::{
    Opts, Scratch, config, grain, open_silo, progress, rss_kib, run_child, status_kib,
};
use crate::report::{Better, Figure, Op};

const ROW: &str = "reminders";
const PER_HOT_GRAIN: u64 = 5;
const PER_COLD_GRAIN: u64 = 100;
const HOT_PERIOD_MS: u64 = 100;
const COLD_DELAY_MS: u64 = 3_600_000;

struct Restart {
    first_tick_s: f64,
    ticks_per_s: f64,
    rss_mib: f64,
    hwm_mib: f64,
    open_s: f64,
}

fn restart_of(v: &serde_json::Value) -> Restart {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Restart {
        first_tick_s: f("first_tick_s"),
        ticks_per_s: f("ticks_per_s"),
        rss_mib: f("rss_kib") / 1024.0,
        hwm_mib: f("hwm_kib") / 1024.0,
        open_s: f("open_s"),
    }
}

pub async fn run(opts: &Opts) -> anyhow::Result<RowOut> {
    let stored: u64 = opts.pick(100_000, 1_000_000);
    let hot: u64 = opts.pick(5_000, 10_000);

    progress(ROW, format!("populating {stored} reminders ({hot} hot)"));
    let ours = populate_and_restart(opts, stored, hot)?;
    progress(
        ROW,
        format!("floor: populating only the {hot} hot reminders"),
    );
    let floor = populate_and_restart(opts, hot, hot)?;

    let floor_name = format!("the same restart with only the {hot} hot reminders stored (0 cold)");
    Ok(RowOut::new(vec![
        Figure::new(
            format!("reminders: restart to first tick, {stored} stored"),
            "s",
            Better::Lower,
            ours.first_tick_s,
        )
        .floor(floor.first_tick_s, floor_name.clone())
        .target(Op::AtMost, 2.0, "< 2 s")
        .note(format!(
            "From `Silo::open` (kinds from the compile cache, sled recovery) through \
             `RunningSilo::start` to the first committed `on-reminder` turn; of which \
             `Silo::open` took {:.2} s (floor {:.2} s). {hot} reminders on {} probe grains \
             are due at the restart and repeat every {HOT_PERIOD_MS} ms; the other {} are \
             due in an hour",
            ours.open_s,
            floor.open_s,
            hot / PER_HOT_GRAIN,
            stored - hot
        )),
        Figure::new(
            format!("reminders: RSS after the restart, {stored} stored"),
            "MiB",
            Better::Lower,
            ours.rss_mib,
        )
        .floor(floor.rss_mib, floor_name.clone())
        .ratio_target(Op::AtMost, 1.1, "flat (≤ 1.1× floor)")
        .note(format!(
            "VmRSS after the tick measurement; peak (VmHWM) {:.0} MiB, floor's peak {:.0} MiB",
            ours.hwm_mib, floor.hwm_mib
        )),
        Figure::new(
            format!("reminders: ticks/s, each a durable turn ({stored} stored)"),
            "ticks/s",
            Better::Higher,
            ours.ticks_per_s,
        )
        .floor(floor.ticks_per_s, floor_name)
        .share()
        .target(Op::AtLeast, 20_000.0, "≥ 20,000 ticks/s")
        .note(format!(
            "`granary_reminder_ticks{{outcome=\"fired\"}}` per second (counted after the \
             tick's commit), over {:.0} s starting 1 s after the first tick; offered load {} \
             ticks/s",
            opts.pick(3.0, 10.0),
            hot * 1000 / HOT_PERIOD_MS
        )),
    ]))
}

/// One process writes `stored` reminders (`hot` of them due now) into fresh data, a
/// second one restarts on it.
fn populate_and_restart(opts: &Opts, stored: u64, hot: u64) -> anyhow::Result<Restart> {
    let scratch = Scratch::new(ROW, &["probe"])?;
    let root = scratch.dir.path().to_path_buf();
    let populated = run_child(
        "reminders-populate",
        opts.quick,
        &phase_args(&root, stored, hot),
    )?;
    progress(
        ROW,
        format!(
            "populated in {:.1}s; restarting on them",
            populated["seconds"].as_f64().unwrap_or(0.0)
        ),
    );
    let restart = run_child("reminders-restart", opts.quick, &phase_args(&root, 0, 0))?;
    Ok(restart_of(&restart))
}

fn phase_args(root: &Path, stored: u64, hot: u64) -> Vec<String> {
    vec![
        "--data".into(),
        root.display().to_string(),
        "--stored".into(),
        stored.to_string(),
        "--hot".into(),
        hot.to_string(),
    ]
}

fn phase_config(root: &Path) -> granary::Config {
    let mut config = config(&root.join("grains"), &root.join("data"));
    config.min_reminder_period_ms = HOT_PERIOD_MS;
    config
}

fn root(opts: &Opts) -> anyhow::Result<PathBuf> {
    opts.data
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--data is required"))
}

fn record(name: String, period_ms: u64, next_due_ms: u64) -> ReminderChange {
    ReminderChange::Put(ReminderRecord {
        name,
        schedule: Schedule::Every { period_ms },
        missed: MissedPolicy::FireOnce,
        next_due_ms,
        history: Default::default(),
    })
}

/// Writes `--stored` reminders, `--hot` of them due now.
pub async fn populate(opts: &Opts) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let root = root(opts)?;
    let silo = open_silo(phase_config(&root)).await?;
    let now = now_ms();
    let mut commits = Vec::new();
    for g in 0..opts.hot.div_ceil(PER_HOT_GRAIN) {
        let mut commit = TurnCommit::new(grain("probe", &format!("h{g}")));
        commit.reminders = (0..PER_HOT_GRAIN)
            .map(|j| record(format!("hot{j}"), HOT_PERIOD_MS, now + j))
            .collect();
        commits.push(commit);
    }
    let cold = opts.stored.saturating_sub(opts.hot);
    for g in 0..cold.div_ceil(PER_COLD_GRAIN) {
        let mut commit = TurnCommit::new(grain("probe", &format!("c{g}")));
        let count = PER_COLD_GRAIN.min(cold - g * PER_COLD_GRAIN);
        commit.reminders = (0..count)
            .map(|j| {
                let i = g * PER_COLD_GRAIN + j;
                record(format!("cold{j}"), COLD_DELAY_MS, now + COLD_DELAY_MS + i)
            })
            .collect();
        commits.push(commit);
    }
    let total = commits.len();
    let mut written = 0usize;
    let mut commits = commits.into_iter().peekable();
    while commits.peek().is_some() {
        let waits: Vec<_> = commits
            .by_ref()
            .take(256)
            .map(|c| silo.storage.commit(c))
            .collect();
        for w in waits {
            w.wait().await?;
        }
        written += 256;
        if written.is_multiple_of(2_560) {
            progress(
                "reminders-populate",
                format!("{}/{total} commits", written.min(total)),
            );
        }
    }
    silo.storage.flush()?;
    let count = silo.storage.reminder_count();
    anyhow::ensure!(
        count == opts.stored,
        "{count} reminders stored, {} wanted",
        opts.stored
    );
    Ok(json!({ "stored": count, "seconds": started.elapsed().as_secs_f64() }))
}

/// Opens the populated data and starts the silo: first tick, ticks/s, RSS.
pub async fn restart(opts: &Opts) -> anyhow::Result<serde_json::Value> {
    let measure = opts.secs(3.0, 10.0);
    let root = root(opts)?;
    let started = Instant::now();
    let silo = open_silo(phase_config(&root)).await?;
    let open_s = started.elapsed().as_secs_f64();
    let running = RunningSilo::start(silo.clone()).await?;
    let fired = silo.metrics.reminder_ticks("fired");
    while fired.get() == 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "no reminder fired within 60 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first_tick_s = started.elapsed().as_secs_f64();
    progress(
        "reminders-restart",
        format!(
            "{} stored: first tick {first_tick_s:.3} s after open (open took {open_s:.3} s); \
             counting ticks for {measure:?}",
            silo.storage.reminder_count()
        ),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (f0, t0) = (fired.get(), Instant::now());
    tokio::time::sleep(measure).await;
    let (f1, t1) = (fired.get(), Instant::now());
    let ticks_per_s = (f1 - f0) as f64 / (t1 - t0).as_secs_f64();
    let retried = silo.metrics.reminder_ticks("retried").get();
    let failed = silo.metrics.reminder_ticks("failed").get();
    let (rss, hwm) = (rss_kib(), status_kib("VmHWM"));
    progress(
        "reminders-restart",
        format!(
            "{ticks_per_s:.0} ticks/s ({retried} retried, {failed} failed); RSS {} MiB, \
             peak {} MiB; window {} entries",
            rss / 1024,
            hwm / 1024,
            silo.reminders.window_len()
        ),
    );
    drop(running);
    Ok(json!({
        "open_s": open_s,
        "first_tick_s": first_tick_s,
        "ticks_per_s": ticks_per_s,
        "retried": retried,
        "failed": failed,
        "rss_kib": rss,
        "hwm_kib": hwm,
    }))
}
