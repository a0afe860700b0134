//! In-process grain call: `Silo::call(counter/bench, "get", null)` from one caller, one
//! call at a time, against the floor: `handle("get", null)` called directly on one raw
//! instance of the same component (same engine, same `InstancePre`, same store set-up).

use std::time::{Duration, Instant};

use super::RowOut;
use crate::common::{Latencies, Opts, Raw, Scratch, call, open_silo, progress};
use crate::report::{Better, Figure, Op};

const ROW: &str = "call";
const PAYLOAD: &[u8] = b"null";

pub async fn run(opts: &Opts) -> anyhow::Result<RowOut> {
    let scratch = Scratch::new(ROW, &["counter"])?;
    let silo = open_silo(scratch.config()).await?;
    let measure = opts.secs(1.5, 8.0);
    let warm = Duration::from_millis(300);

    progress(ROW, format!("ours: Silo::call counter get for {measure:?}"));
    let reply = call(&silo, "counter", "bench", "get", PAYLOAD).await?;
    let warm_until = Instant::now() + warm;
    while Instant::now() < warm_until {
        call(&silo, "counter", "bench", "get", PAYLOAD).await?;
    }
    let mut ours = Latencies::default();
    let started = Instant::now();
    while started.elapsed() < measure {
        let t = Instant::now();
        call(&silo, "counter", "bench", "get", PAYLOAD).await?;
        ours.push(t);
    }
    let ours_rate = ours.0.len() as f64 / started.elapsed().as_secs_f64();

    progress(
        ROW,
        format!("floor: raw handle(get) on one instance for {measure:?}"),
    );
    let mut raw = Raw::new(&silo, "counter", "floor").await?;
    raw.activate(None).await?;
    anyhow::ensure!(
        raw.handle("get", PAYLOAD).await? == reply,
        "raw reply differs"
    );
    let warm_until = Instant::now() + warm;
    while Instant::now() < warm_until {
        raw.handle("get", PAYLOAD).await?;
    }
    let mut floor = Latencies::default();
    let started = Instant::now();
    while started.elapsed() < measure {
        let t = Instant::now();
        raw.handle("get", PAYLOAD).await?;
        floor.push(t);
    }
    let floor_rate = floor.0.len() as f64 / started.elapsed().as_secs_f64();
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
             is idle), oneshot reply, metrics",
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
