//! Resident memory and memory mappings per idle activation: a silo process activates N
//! counter grains (one `get` each, then idle) and we read the proportional set size (`Pss`
//! of `/proc/self/smaps_rollup`), `VmRSS` and the lines of `/proc/self/maps` before and
//! after. The floors: the same silo process with 0
//! activations (the baseline the delta is taken from), and N raw instances of the same
//! component after one call each, measured the same way in a process of their own.

use std::time::Duration;

use serde_json::json;

use super::RowOut;
use crate::common::{
    Opts, Raw, Scratch, Snapshot, call, for_each_concurrent, live_limit, maps_count, open_silo,
    progress, pss_kib, rss_breakdown, rss_kib, run_child,
};
use crate::report::{Better, Figure, Op};
use granary::runtime::Allocation;

const ROW: &str = "memory";

fn target_n(opts: &Opts) -> usize {
    opts.pick(5_000, 100_000)
}

pub async fn run(opts: &Opts) -> anyhow::Result<RowOut> {
    let want = target_n(opts);
    let limit = live_limit(ROW, want, opts.quick)?;
    let n = limit.cap(want, 50);
    progress(
        ROW,
        format!("floor: {n} raw instances in a process of their own"),
    );
    let raw = run_child("memory-raw", opts.quick, &["--n".into(), n.to_string()])?;
    let raw_n = raw["n"].as_u64().unwrap_or(0) as f64;
    let raw_kib = raw["pss_per_kib"].as_f64().unwrap_or(f64::NAN);
    let raw_rss_kib = raw["rss_per_kib"].as_f64().unwrap_or(f64::NAN);
    let raw_maps = raw["maps_per"].as_f64().unwrap_or(f64::NAN);
    let raw_instantiated = raw["instantiated_kib"].as_f64().unwrap_or(f64::NAN);
    let raw_breakdown = raw["breakdown"].as_str().unwrap_or("").to_owned();

    let scratch = Scratch::new(ROW, &["counter"])?;
    let mut config = scratch.config();
    config.max_activations = n as u32 + 1_000;
    let silo = open_silo(config).await?;
    let capacity = silo.runtime.capacity;
    let mut notes = vec![format!(
        "N = {n} idle counter activations; vm.max_map_count = {}",
        capacity.max_map_count.unwrap_or(0)
    )];
    if let Some(note) = limit.note(want, n) {
        notes.push(note);
    }
    if capacity.max_map_count > Some(65_530) {
        notes.push("vm.max_map_count was raised for this row (the bench ran as root)".into());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, maps0, regions0) = (rss_kib(), maps_count(), Snapshot::take());
    let pss0 = pss_kib();

    progress(
        ROW,
        format!("ours: activating {n} counters (silo RSS {rss0} KiB)"),
    );
    let s = silo.clone();
    let batch = for_each_concurrent(n, 64, move |i| {
        let silo = s.clone();
        async move {
            call(&silo, "counter", &format!("m{i}"), "get", b"null")
                .await
                .map(|_| ())
        }
    })
    .await;
    anyhow::ensure!(
        batch.failed == 0,
        "{} activations failed: {:?}",
        batch.failed,
        batch.first_error
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss1, maps1, pss1) = (rss_kib(), maps_count(), pss_kib());
    let breakdown = rss_breakdown(&regions0, &Snapshot::take(), n);
    progress(ROW, format!("where it went, per activation: {breakdown}"));
    anyhow::ensure!(silo.catalog.len() == n, "activations were evicted");
    let per_kib = (pss1.saturating_sub(pss0)) as f64 / n as f64;
    let rss_per_kib = (rss1.saturating_sub(rss0)) as f64 / n as f64;
    let maps_per = (maps1.saturating_sub(maps0)) as f64 / n as f64;
    progress(
        ROW,
        format!(
            "ours {per_kib:.1} KiB (RSS {rss_per_kib:.1}) and {maps_per:.2} mappings per activation; raw {raw_kib:.1} KiB (RSS {raw_rss_kib:.1}), {raw_maps:.2} mappings"
        ),
    );

    let mut memory = Figure::new(
        format!("resident memory per idle activation ({n} active)"),
        "KiB",
        Better::Lower,
        per_kib,
    )
    .floor(
        raw_kib,
        format!(
            "a raw instance of counter.wasm in its own `Store` after activate + one `get` \
             call, (Pss with {raw_n} of them − Pss before) / {raw_n}, in a process of its own"
        ),
    )
    .target(Op::AtMost, 40.0, "≤ 40 KiB each")
    .note(format!(
        "(Pss with N activations − Pss of the same silo with 0 activations) / N: shared \
         pages (copy-on-write memory images: {}) count once. By region of \
         /proc/self/smaps (RSS), per activation: {breakdown}. The raw floor's: \
         {raw_breakdown}",
        match capacity.allocation {
            Allocation::Pooled => "shared",
            Allocation::Arena =>
                "copied into arena memories, as vm.max_map_count limits the activations",
        }
    ));
    for note in notes {
        memory = memory.note(note);
    }
    let missing = (n < want).then(|| {
        format!(
            "resident memory per idle activation with {want} active: the silo holds only {} \
             live activations (see the capacity row); measured with {n}",
            limit.reached
        )
    });
    Ok(RowOut::new(vec![
        memory,
        Figure::new(
            "  RSS per activation (shared image pages counted in every instance)",
            "KiB",
            Better::Lower,
            rss_per_kib,
        )
        .floor(raw_rss_kib, "the raw instance's, the same way"),
        Figure::new(
            "  silo RSS with 0 activations",
            "MiB",
            Better::Lower,
            rss0 as f64 / 1024.0,
        ),
        Figure::new(
            format!("  silo RSS with {n} idle activations"),
            "MiB",
            Better::Lower,
            rss1 as f64 / 1024.0,
        ),
        Figure::new(
            "  reference: raw instance right after instantiation (no call yet)",
            "KiB",
            Better::Lower,
            raw_instantiated,
        )
        .floor(raw_kib, "the same raw instance after activate + one `get`"),
        Figure::new(
            "memory mappings per activation",
            "maps",
            Better::Lower,
            maps_per,
        )
        .floor(raw_maps, "a raw instance's mappings, measured as above")
        .note("(lines of /proc/self/maps with N activations − with 0) / N"),
    ])
    .missing(missing))
}

/// The floor in a process of its own: N raw instances, read after instantiation and again
/// after one call each.
pub async fn raw_phase(opts: &Opts) -> anyhow::Result<serde_json::Value> {
    let n = opts.n;
    let scratch = Scratch::new("memory-raw", &["counter"])?;
    let mut config = scratch.config();
    config.max_activations = n as u32 + 1_000;
    let silo = open_silo(config).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, maps0, regions0) = (rss_kib(), maps_count(), Snapshot::take());
    let pss0 = pss_kib();
    let mut keep = Vec::with_capacity(n);
    for i in 0..n {
        keep.push(Raw::new(&silo, "counter", &format!("m{i}")).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pss_instantiated = pss_kib();
    for raw in &mut keep {
        raw.activate(None).await?;
        raw.handle("get", b"null").await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss1, maps1, pss1) = (rss_kib(), maps_count(), pss_kib());
    let breakdown = rss_breakdown(&regions0, &Snapshot::take(), n);
    let per_kib = pss1.saturating_sub(pss0) as f64 / n as f64;
    let rss_per_kib = rss1.saturating_sub(rss0) as f64 / n as f64;
    let instantiated_kib = pss_instantiated.saturating_sub(pss0) as f64 / n as f64;
    let maps_per = maps1.saturating_sub(maps0) as f64 / n as f64;
    progress(
        "memory-raw",
        format!(
            "{n} raw instances: {instantiated_kib:.1} KiB each after instantiation, \
             {per_kib:.1} KiB and {maps_per:.2} mappings after one call ({breakdown})"
        ),
    );
    Ok(json!({
        "n": n,
        "pss_per_kib": per_kib,
        "rss_per_kib": rss_per_kib,
        "instantiated_kib": instantiated_kib,
        "maps_per": maps_per,
        "rss0_kib": rss0,
        "breakdown": breakdown,
    }))
}
