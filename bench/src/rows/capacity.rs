//! Live activations under the stock `vm.max_map_count` (65530): a silo with the default
//! configuration (which lowers `max_activations` to what the map count allows) is filled
//! with counter grains one at a time until eviction starts, and a little past it. Every
//! call must succeed: eviction, not an mmap failure, is what a full silo does.

use std::time::Instant;

use super::RowOut;
use crate::common::{
    Opts, Scratch, call, failure_cause, maps_count, max_map_count, open_silo, progress,
};
use crate::report::{Better, Figure, Op};

const ROW: &str = "capacity";

pub async fn run(_opts: &Opts) -> anyhow::Result<RowOut> {
    let scratch = Scratch::new(ROW, &["counter"])?;
    let silo = open_silo(scratch.config()).await?;
    let capacity = silo.runtime.capacity;
    let limit = capacity.max_activations as usize;
    let map_limit = max_map_count().unwrap_or(0);
    let past = limit + (limit / 50).max(20);
    let maps0 = maps_count();
    progress(
        ROW,
        format!(
            "vm.max_map_count = {map_limit}; the silo allows {limit} activations; \
             activating {past} counters one at a time"
        ),
    );
    let started = Instant::now();
    let mut reachable = 0usize;
    let mut eviction_at = None;
    let mut maps_at_limit = maps0;
    let mut maps_peak = maps0;
    let mut failures = 0u64;
    let mut first_failure = None;
    for i in 0..past {
        if let Err(e) = call(&silo, "counter", &format!("c{i}"), "get", b"null").await {
            failures += 1;
            if first_failure.is_none() {
                first_failure = Some(format!(
                    "activation {} failed: {e}; {}",
                    i + 1,
                    failure_cause(&silo).await
                ));
            }
            continue;
        }
        let maps = maps_count_cheap(i, limit, maps_peak);
        maps_peak = maps_peak.max(maps);
        if eviction_at.is_none() {
            // Evicted activations leave the directory once deactivated; one still
            // deactivating is seen in the summaries.
            let evicting = silo.catalog.len() < i + 1
                || (i + 3 >= limit && silo.catalog.summaries().iter().any(|a| a.deactivating));
            if evicting {
                eviction_at = Some(i + 1);
            } else {
                reachable = i + 1;
                maps_at_limit = maps;
            }
        }
    }
    let maps_peak = maps_peak.max(maps_count());
    let maps_per = (maps_at_limit.saturating_sub(maps0)) as f64 / reachable.max(1) as f64;
    progress(
        ROW,
        format!(
            "{reachable} live before eviction (eviction began at activation {eviction_at:?}); \
             {failures} failed calls; {maps_per:.2} mappings per activation; peak {maps_peak} \
             of {map_limit} mappings; {:.1}s",
            started.elapsed().as_secs_f64()
        ),
    );
    let mut failed = Figure::new(
        format!("  failed calls while filling to {past} (mmap or pool failures)"),
        "calls",
        Better::Lower,
        failures as f64,
    )
    .target(Op::AtMost, 0.0, "0 (never fails an mmap)");
    if let Some(e) = first_failure {
        failed = failed.note(e);
    }
    Ok(RowOut::new(vec![
        Figure::new(
            "live activations before eviction, default vm.max_map_count",
            "activations",
            Better::Higher,
            reachable as f64,
        )
        .target(Op::AtLeast, 30_000.0, "≥ 30,000 live")
        .note(format!(
            "vm.max_map_count = {map_limit}; the silo lowered max_activations to {limit} \
             from it (host/src/runtime/capacity.rs). The bench activated counters one at a \
             time and counted them live until the first eviction, then went on to {past}. \
             Mappings at the peak: {maps_peak} of {map_limit}; {maps_per:.2} mappings per \
             activation"
        )),
        failed,
    ]))
}

/// Reading /proc/self/maps costs O(mappings); read it only near the limit and every
/// 1,000 activations.
fn maps_count_cheap(i: usize, limit: usize, last: u64) -> u64 {
    if i + 3 >= limit || i.is_multiple_of(1000) {
        maps_count()
    } else {
        last
    }
}
