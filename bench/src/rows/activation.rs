//! Cold activation: the first call to a counter grain whose state is stored (catalog entry,
//! task, instantiate, load state, `activate`, then the `get` turn), one grain at a time,
//! against the floor: `Store::new` + `InstancePre::instantiate_async` of the same
//! component. Every instance stays alive, as activations do, so each one takes a fresh
//! pool slot on both sides; the variants run interleaved in rounds.

use std::time::Instant;

use granary::storage::{StateChange, TurnCommit};

use super::RowOut;
use crate::common::{Latencies, Opts, Raw, Scratch, call, grain, live_limit, open_silo, progress};
use crate::report::{Better, Figure, Op};

const ROW: &str = "activation";
const STATE: &[u8] = br#"{"value":42}"#;
const WARM: usize = 50;
const ROUND: usize = 50;

pub async fn run(opts: &Opts) -> anyhow::Result<RowOut> {
    let want: usize = opts.pick(600, 600);
    // Three kinds of live instance per round (floor, reference, ours), plus warm-up ones.
    let limit = live_limit(ROW, 3 * (WARM + want), opts.quick)?;
    let n = (limit.cap(3 * (WARM + want), 20) / 3).saturating_sub(WARM);
    anyhow::ensure!(n > 0, "the silo holds too few activations: {limit:?}");
    let limit_note = limit.note(3 * (WARM + want), 3 * (WARM + n));
    let scratch = Scratch::new(ROW, &["counter"])?;
    let silo = open_silo(scratch.config()).await?;

    progress(ROW, format!("storing the state of {} counters", WARM + n));
    let waits: Vec<_> = (0..WARM + n)
        .map(|i| {
            let mut commit = TurnCommit::new(grain("counter", &format!("cold-{i}")));
            commit.state = Some(StateChange::Write(STATE.to_vec()));
            silo.storage.commit(commit)
        })
        .collect();
    for w in waits {
        w.wait().await?;
    }

    // Rounds of ROUND grains: floor, reference, ours, so all three take fresh pool slots
    // and fiber stacks in the same way and none runs on slots another one freed.
    progress(
        ROW,
        format!(
            "{n} each of: raw instantiate (floor); raw instantiate + load state + activate \
             + get (reference); first Silo::call (ours), interleaved in rounds of {ROUND}"
        ),
    );
    let mut keep = Vec::with_capacity(2 * (WARM + n));
    let (mut floor, mut wasm_only, mut ours) = (
        Latencies::default(),
        Latencies::default(),
        Latencies::default(),
    );
    let mut i = 0;
    while i < WARM + n {
        let round = i..(i + ROUND).min(WARM + n);
        let measured = |i: usize| i >= WARM;
        for i in round.clone() {
            let t = Instant::now();
            let raw = Raw::new(&silo, "counter", &format!("raw-{i}")).await?;
            if measured(i) {
                floor.push(t);
            }
            keep.push(raw);
        }
        for i in round.clone() {
            let id = grain("counter", &format!("cold-{i}"));
            let t = Instant::now();
            let mut raw = Raw::new(&silo, "counter", &id.key).await?;
            let state = silo.storage.load_state(&id)?;
            raw.activate(state.as_deref()).await?;
            raw.handle("get", b"null").await?;
            if measured(i) {
                wasm_only.push(t);
            }
            keep.push(raw);
        }
        for i in round.clone() {
            let t = Instant::now();
            let reply = call(&silo, "counter", &format!("cold-{i}"), "get", b"null").await?;
            if measured(i) {
                ours.push(t);
            }
            anyhow::ensure!(reply == b"42", "cold-{i} answered {reply:?}");
        }
        i = round.end;
    }
    anyhow::ensure!(silo.catalog.len() == WARM + n, "activations were evicted");
    drop(keep);
    progress(
        ROW,
        format!(
            "ours mean {:.1} µs, floor mean {:.1} µs, reference mean {:.1} µs",
            ours.mean_us(),
            floor.mean_us(),
            wasm_only.mean_us()
        ),
    );

    let floor_name = "`Store::new` + `InstancePre::instantiate_async` of counter.wasm \
                      (silo's engine and `InstancePre`), instances kept alive";
    let mut cold = Figure::new(
        "cold activation, mean (first call to a stored counter)",
        "µs",
        Better::Lower,
        ours.mean_us(),
    )
    .floor(floor.mean_us(), floor_name)
    .ratio_target(Op::AtMost, 3.0, "≤ 3× floor")
    .note(format!(
        "Ours is the latency of `Silo::call(counter/cold-i, get)` for {n} grains with \
             stored state, one at a time: catalog entry and task, `load_state`, \
             instantiate, `activate`, and the `get` turn itself (a few µs, see the call row)"
    ));
    if let Some(note) = limit_note {
        cold = cold.note(note);
    }
    Ok(RowOut::new(vec![
        cold,
        Figure::new(
            "  cold activation p50",
            "µs",
            Better::Lower,
            ours.percentile_us(50.0),
        )
        .floor(floor.percentile_us(50.0), "raw instantiate p50"),
        Figure::new(
            "  cold activation p99",
            "µs",
            Better::Lower,
            ours.percentile_us(99.0),
        )
        .floor(floor.percentile_us(99.0), "raw instantiate p99"),
        Figure::new(
            "  reference: raw instantiate + load state + activate + get",
            "µs",
            Better::Lower,
            wasm_only.mean_us(),
        )
        .floor(floor.mean_us(), "raw instantiate alone")
        .note(
            "The same work as ours without the silo (no catalog, task or mailbox): how much \
             of ours is the guest's `activate` and the state load",
        ),
    ]))
}
