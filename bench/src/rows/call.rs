//! In-process grain call: `Silo::call(counter/bench, "get", null)` from one caller, one
//! call at a time, against the floor: `handle("get", null)` called directly on one raw
//! instance of the same component (same engine, same `InstancePre`, same store set-up).

use std::time::{Duration, Instant};

use super::RowOut;
use crate::common::{Latencies, Opts, Raw, Scratch, call, open_silo, progress};
use crate::report::{Better, Figure, Op};

const ROW: &str = "call";
const PAYLOAD: &[u8] = b"null";
/// Slices per side; ours and the floor take turns.
const SLICES: u32 = 20;

pub async fn run(opts: &Opts) -> anyhow::Result<RowOut> {
    let scratch = Scratch::new(ROW, &["counter"])?;
    let silo = open_silo(scratch.config()).await?;
    let measure = opts.secs(1.5, 8.0);
    let warm = Duration::from_millis(300);

    progress(
        ROW,
        format!(
            "ours (Silo::call counter get) and the floor (raw handle(get) on one instance), \
             alternating in {SLICES} slices each, {measure:?} per side"
        ),
    );
    let reply = call(&silo, "counter", "bench", "get", PAYLOAD).await?;
    let mut raw = Raw::new(&silo, "counter", "floor").await?;
    raw.activate(None).await?;
    anyhow::ensure!(
        raw.handle("get", PAYLOAD).await? == reply,
        "raw reply differs"
    );
    let warm_until = Instant::now() + warm;
    while Instant::now() < warm_until {
        call(&silo, "counter", "bench", "get", PAYLOAD).await?;
        raw.handle("get", PAYLOAD).await?;
    }
    // Alternating short slices: a neighbour slowing the machine for a few seconds slows
    // both sides alike instead of skewing the ratio.
    let slice = measure / SLICES;
    let (mut ours, mut floor) = (Latencies::default(), Latencies::default());
    let (mut ours_time, mut floor_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..SLICES {
        let started = Instant::now();
        while started.elapsed() < slice {
            let t = Instant::now();
            call(&silo, "counter", "bench", "get", PAYLOAD).await?;
            ours.push(t);
        }
        ours_time += started.elapsed();
        let started = Instant::now();
        while started.elapsed() < slice {
            let t = Instant::now();
            raw.handle("get", PAYLOAD).await?;
            floor.push(t);
        }
        floor_time += started.elapsed();
    }
    let ours_rate = ours.0.len() as f64 / ours_time.as_secs_f64();
    let floor_rate = floor.0.len() as f64 / floor_time.as_secs_f64();
    progress(
        ROW,
        format!("ours {ours_rate:.0} calls/s, floor {floor_rate:.0} calls/s"),
    );

    let floor_name = "`handle(\"get\", null)` on one raw instance of counter.wasm in our own \
                      `Store` (silo's engine and `InstancePre`), one call at a time";
    Ok(RowOut::new(vec![
        Figure::new(
            "in-process call (counter `get`, JSON payload), one caller",
            "calls/s",
            Better::Higher,
            ours_rate,
        )
        .floor(floor_rate, floor_name)
        .ratio_target(Op::AtMost, 2.0, "cost ≤ 2× floor")
        .note(
            "Ours is `Silo::call` awaited in a loop by one tokio task: catalog lookup, \
             the activation's turn lock, the turn run in the caller's task (the activation \
             is idle), oneshot reply, metrics. The two sides alternate in 20 slices each",
        ),
        Figure::new(
            "  in-process call p50",
            "µs",
            Better::Lower,
            ours.percentile_us(50.0),
        )
        .floor(floor.percentile_us(50.0), "raw `handle` p50"),
        Figure::new(
            "  in-process call p99",
            "µs",
            Better::Lower,
            ours.percentile_us(99.0),
        )
        .floor(floor.percentile_us(99.0), "raw `handle` p99"),
    ]))
}
