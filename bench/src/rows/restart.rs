//! Restart to serving with a warm compile cache: `Silo::open` + `RunningSilo::start` for
//! the four example kinds when every component is already compiled in the cache (what a
//! restarted pod does with the cache on its volume). The reference: the same start with
//! an empty cache, every kind compiled, which is what the cache saves.

use std::time::{Duration, Instant};

use granary::RunningSilo;

use super::RowOut;
use crate::common::{Opts, Scratch, open_silo, progress};
use crate::report::{Better, Figure, Op};

const ROW: &str = "restart";
const KINDS: &[&str] = &["counter", "ledger", "sync-worker", "probe"];

pub async fn run(opts: &Opts) -> anyhow::Result<RowOut> {
    let scratch = Scratch::new(ROW, KINDS)?;
    let rounds = opts.pick(2, 5);
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for round in 0..rounds {
        let cache = scratch.path(&format!("cache-{round}"));
        progress(ROW, format!("round {}: empty cache, then warm", round + 1));
        cold.push(start(&scratch, &cache, &format!("cold-{round}")).await?);
        warm.push(start(&scratch, &cache, &format!("warm-{round}")).await?);
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let (cold, warm) = (median(cold), median(warm));
    progress(
        ROW,
        format!(
            "warm {:.0} ms, empty cache {:.0} ms",
            warm * 1e3,
            cold * 1e3
        ),
    );
    let figure = Figure::new(
        format!(
            "restart to serving, {} kinds, warm compile cache",
            KINDS.len()
        ),
        "s",
        Better::Lower,
        warm,
    )
    .floor(
        cold,
        "the same start with an empty cache: every kind compiled",
    )
    .target(Op::AtMost, 1.0, "well under 1 s")
    .note(format!(
        "median of {rounds}: `Silo::open` (storage, engine, kinds) + `RunningSilo::start` \
         until it serves; fresh data directories, so only the cache differs"
    ));
    Ok(RowOut::new(vec![figure]))
}

/// Time from nothing to a serving silo with `cache` as its compile cache.
async fn start(scratch: &Scratch, cache: &std::path::Path, data: &str) -> anyhow::Result<Duration> {
    let mut config = scratch.config();
    config.data_dir = scratch.path(data);
    config.cache_dir = Some(cache.to_path_buf());
    let started = Instant::now();
    let silo = open_silo(config).await?;
    anyhow::ensure!(
        silo.kinds.list().len() == KINDS.len(),
        "a kind did not load"
    );
    let running = RunningSilo::start(silo).await?;
    let elapsed = started.elapsed();
    running.shutdown().await;
    Ok(elapsed)
}
