//! Drain: 10,000 active probe grains, 1,000 of them with a 10 ms timer, then
//! `RunningSilo::shutdown()` (readiness off, every activation deactivated, its
//! `deactivate` committing a state write, storage flushed). The floor: calling
//! `deactivate(drain)` on the same number of raw instances and dropping them, with no
//! persistence, one after another.

use std::time::{Duration, Instant};

use granary::RunningSilo;
use granary::runtime::bindings::types::DeactivationReason;

use super::RowOut;
use crate::common::{
    Opts, Raw, Scratch, call, for_each_concurrent, grain, live_limit, open_silo, progress,
};
use crate::report::{Better, Figure, Op};

const ROW: &str = "drain";
const GRAINS: usize = 10_000;
const WITH_TIMERS: usize = 1_000;
const TIMER: &[u8] = br#"{"name":"t","due_ms":10,"period_ms":10}"#;

pub async fn run(opts: &Opts) -> anyhow::Result<RowOut> {
    let limit = live_limit(ROW, GRAINS, opts.quick)?;
    let n = limit.cap(GRAINS, 50);
    let timers = WITH_TIMERS.min(n);
    let scratch = Scratch::new(ROW, &["probe"])?;
    let mut config = scratch.config();
    config.max_activations = GRAINS as u32 + 1_000;
    let silo = open_silo(config).await?;
    let capacity = silo.runtime.capacity;
    let mut notes: Vec<String> = limit.note(GRAINS, n).into_iter().collect();
    if capacity.max_map_count > Some(65_530) {
        notes.push(format!(
            "vm.max_map_count raised to {} for this row",
            capacity.max_map_count.unwrap_or(0)
        ));
    }

    progress(
        ROW,
        format!("floor: {n} raw probe instances, deactivate + drop each"),
    );
    let mut raws = Vec::with_capacity(n);
    for i in 0..n {
        let mut raw = Raw::new(&silo, "probe", &format!("raw-{i}")).await?;
        raw.activate(None).await?;
        raw.handle("get", b"null").await?;
        raws.push(raw);
    }
    let started = Instant::now();
    for mut raw in raws.drain(..) {
        raw.grain
            .call_deactivate(&mut raw.store, DeactivationReason::Drain)
            .await?
            .map_err(anyhow::Error::msg)?;
    }
    let floor = started.elapsed();
    drop(raws);

    progress(
        ROW,
        format!("ours: activating {n} probes, {timers} with a 10 ms timer"),
    );
    let running = RunningSilo::start(silo.clone()).await?;
    let s = silo.clone();
    let batch = for_each_concurrent(n, 64, move |i| {
        let silo = s.clone();
        async move {
            let key = format!("d{i}");
            if i < timers {
                call(&silo, "probe", &key, "start_timer", TIMER).await?;
            } else {
                call(&silo, "probe", &key, "get", b"null").await?;
            }
            Ok::<_, granary::CallError>(())
        }
    })
    .await;
    anyhow::ensure!(
        batch.failed == 0,
        "{} calls failed: {:?}",
        batch.failed,
        batch.first_error
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    anyhow::ensure!(silo.catalog.len() == n, "activations were evicted");

    progress(
        ROW,
        format!("ours: RunningSilo::shutdown() with {n} active"),
    );
    let started = Instant::now();
    let ok = running.shutdown().await;
    let ours = started.elapsed();
    anyhow::ensure!(ok, "the drain reported a timed-out step");
    anyhow::ensure!(silo.catalog.is_empty(), "activations left after the drain");
    // Every grain committed its deactivation.
    for i in (0..n).step_by((n / 100).max(1)) {
        let state = silo
            .storage
            .load_state(&grain("probe", &format!("d{i}")))?
            .unwrap_or_default();
        let value: serde_json::Value = serde_json::from_slice(&state)?;
        anyhow::ensure!(
            value["last_deactivation"] == "Drain",
            "probe/d{i} did not commit its drain: {value}"
        );
    }
    progress(
        ROW,
        format!(
            "ours {:.0} ms, floor {:.0} ms",
            ours.as_secs_f64() * 1e3,
            floor.as_secs_f64() * 1e3
        ),
    );
    let mut figure = Figure::new(
        format!("drain of {n} active grains ({timers} with 10 ms timers)"),
        "s",
        Better::Lower,
        ours.as_secs_f64(),
    )
    .floor(
        floor.as_secs_f64(),
        format!(
            "`deactivate(drain)` on {n} raw probe instances one after another, then drop, \
             no persistence"
        ),
    )
    .target(Op::AtMost, 2.0, "< 2 s")
    .note(
        "Ours is `RunningSilo::shutdown()`: every probe's `deactivate` writes state, \
         committed (group commit) before the activation ends; then a final flush; checked \
         on a sample of the stored states",
    );
    for note in notes {
        figure = figure.note(note);
    }
    let missing = (n < GRAINS).then(|| {
        format!(
            "drain of {GRAINS} active grains: the silo holds only {} live activations (see \
             the capacity row); measured with {n}",
            limit.reached
        )
    });
    Ok(RowOut::new(vec![figure]).missing(missing))
}
