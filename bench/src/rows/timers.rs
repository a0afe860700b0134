//! Timer-driven guest calls: 10,000 probe grains each register a 10 ms periodic timer;
//! every tick is an `on-timer` turn that increments the persisted `timer_ticks`, so each
//! tick is a durable turn (state write, flush before the next turn of that grain). The
//! figure is committed ticks per second, read from the stored states.

use std::sync::Arc;
use std::time::{Duration, Instant};

use granary::Silo;

use super::RowOut;
use crate::common::{
    Opts, Scratch, call, for_each_concurrent, grain, live_limit, open_silo, progress,
};
use crate::report::{Better, Figure, Op};

const ROW: &str = "timers";
const GRAINS: usize = 10_000;
const TIMER: &[u8] = br#"{"name":"t","due_ms":10,"period_ms":10}"#;

pub async fn run(opts: &Opts) -> anyhow::Result<RowOut> {
    let measure = opts.secs(3.0, 10.0);
    let limit = live_limit(ROW, GRAINS, opts.quick)?;
    let n = limit.cap(GRAINS, 50);
    let scratch = Scratch::new(ROW, &["probe"])?;
    let mut config = scratch.config();
    config.max_activations = GRAINS as u32 + 1_000;
    let silo = open_silo(config).await?;
    let mut notes: Vec<String> = limit.note(GRAINS, n).into_iter().collect();
    if silo.runtime.capacity.max_map_count > Some(65_530) {
        notes.push(format!(
            "vm.max_map_count raised to {:?} for this row (10,000 activations exceed the \
             silo's limit under the default)",
            silo.runtime.capacity.max_map_count.unwrap_or(0)
        ));
    }

    progress(ROW, format!("starting a 10 ms timer on {n} probe grains"));
    let started = Instant::now();
    let s = silo.clone();
    let batch = for_each_concurrent(n, 64, move |i| {
        let silo = s.clone();
        async move {
            call(&silo, "probe", &format!("t{i}"), "start_timer", TIMER)
                .await
                .map(|_| ())
        }
    })
    .await;
    anyhow::ensure!(
        batch.failed == 0,
        "{} start_timer calls failed: {:?}",
        batch.failed,
        batch.first_error
    );
    progress(
        ROW,
        format!(
            "started in {:.1}s; warming up",
            started.elapsed().as_secs_f64()
        ),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (t0, s0) = (Instant::now(), stored_ticks(&silo, n).await?);
    let m0 = silo.metrics.timer_ticks.get();
    progress(ROW, format!("counting ticks for {measure:?}"));
    tokio::time::sleep(measure).await;
    let m1 = silo.metrics.timer_ticks.get();
    let (t1, s1) = (Instant::now(), stored_ticks(&silo, n).await?);
    let elapsed = (t1 - t0).as_secs_f64();
    let durable = (s1 - s0) as f64 / elapsed;
    let started_ticks = (m1 - m0) as f64 / elapsed;
    progress(
        ROW,
        format!("{durable:.0} committed ticks/s ({started_ticks:.0} ticks/s started)"),
    );
    anyhow::ensure!(silo.catalog.len() == n, "activations were evicted");

    let mut figure = Figure::new(
        format!("timer-driven guest calls ({n} grains, 10 ms timers), each a durable turn"),
        "ticks/s",
        Better::Higher,
        durable,
    )
    .target(Op::AtLeast, 100_000.0, "≥ 100,000/s")
    .note(format!(
        "Committed ticks per second: the sum of the persisted `timer_ticks` of all {n} \
         grains, read from storage before and after {:.0} s. Offered load is {} ticks/s; \
         ticks that fall behind coalesce (the next tick is the next period boundary). \
         `granary_timer_ticks` counted {started_ticks:.0} ticks/s started",
        measure.as_secs_f64(),
        n * 100
    ));
    for note in notes {
        figure = figure.note(note);
    }
    let missing = (n < GRAINS).then(|| {
        format!(
            "timer-driven guest calls with {GRAINS} grains: the silo holds only {} live \
             activations (see the capacity row); measured with {n}",
            limit.reached
        )
    });
    Ok(RowOut::new(vec![figure]).missing(missing))
}

/// The sum of the committed `timer_ticks` of grains `t0..t<n>`.
async fn stored_ticks(silo: &Arc<Silo>, n: usize) -> anyhow::Result<u64> {
    let silo = silo.clone();
    tokio::task::spawn_blocking(move || {
        let mut sum = 0;
        for i in 0..n {
            let state = silo.storage.load_state(&grain("probe", &format!("t{i}")))?;
            let value: serde_json::Value = match state {
                Some(bytes) => serde_json::from_slice(&bytes)?,
                None => serde_json::Value::Null,
            };
            sum += value["timer_ticks"].as_u64().unwrap_or(0);
        }
        anyhow::Ok(sum)
    })
    .await?
}
