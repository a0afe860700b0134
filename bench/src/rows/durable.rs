//! Durable write turns: 64 concurrent callers, each calling `increment` on its own counter
//! in a loop; a call returns once its turn's batch is flushed. The floor does the same
//! writes with no wasm: 64 concurrent callers each hand one write (the same key and value
//! shape) to one committer thread, which puts every write waiting into one sled batch,
//! flushes once for all of them (group commit) and acknowledges each caller after the
//! flush. A reference line applies one batch per write instead (how the silo's committer
//! worked before it merged a group into one batch), still with one flush per group: sled's
//! flush cost grows with the number of batches, not with the bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use granary::Silo;
use granary::storage::{StateChange, TurnCommit};
use tokio::sync::oneshot;

use super::RowOut;
use crate::common::{Latencies, Opts, Scratch, call, grain, open_silo, progress};
use crate::report::{Better, Figure, Op};

const ROW: &str = "durable";
const CALLERS: usize = 64;
/// The silo's committer folds at most this many batches into one flush; so does the floor.
const MAX_GROUP: usize = 4096;

struct Run {
    rate: f64,
    lat: Latencies,
}

pub async fn run(opts: &Opts) -> anyhow::Result<RowOut> {
    let measure = opts.secs(2.0, 10.0);
    let warm = Duration::from_millis(500);
    let scratch = Scratch::new(ROW, &["counter"])?;
    let silo = open_silo(scratch.config()).await?;
    for i in 0..CALLERS {
        call(&silo, "counter", &format!("w{i}"), "get", b"null").await?;
    }

    progress(
        ROW,
        format!("floor: raw sled group commit, {CALLERS} callers, {measure:?}"),
    );
    let floor = sled_floor(&scratch.path("floor-db"), true, warm, measure).await?;
    progress(ROW, format!("floor {:.0} writes/s", floor.rate));
    progress(
        ROW,
        "reference: raw sled, one batch per write, one flush per group",
    );
    let per_write = sled_floor(&scratch.path("per-write-db"), false, warm, measure).await?;
    progress(
        ROW,
        format!("one batch per write: {:.0} writes/s", per_write.rate),
    );

    progress(
        ROW,
        format!("ours: counter increment, {CALLERS} callers, {measure:?}"),
    );
    let mut ours = silo_turns(&silo, warm, measure).await?;
    progress(ROW, format!("ours {:.0} turns/s", ours.rate));

    progress(
        ROW,
        "reference: the silo's storage alone (SledStorage::commit), same callers",
    );
    let storage_only = storage_commits(&silo, warm, measure).await?;
    progress(
        ROW,
        format!("storage alone {:.0} commits/s", storage_only.rate),
    );
    let mut floor_lat = floor.lat;

    Ok(RowOut::new(vec![
        Figure::new(
            "durable write turns (counter `increment`, 64 callers, ack after flush)",
            "turns/s",
            Better::Higher,
            ours.rate,
        )
        .floor(
            floor.rate,
            "64 tasks each hand one write (same key and value shape) to one thread that \
             puts every waiting write into one sled batch, flushes once, then acks them \
             all (group commit, no wasm, no silo); same sled mode (HighThroughput), same \
             cap of 4,096 writes per group",
        )
        .share()
        .ratio_target(Op::AtLeast, 0.5, "≥ 50 % of floor")
        .target(Op::AtLeast, 20_000.0, "≥ 20,000/s"),
        Figure::new(
            "  durable turn p50",
            "µs",
            Better::Lower,
            ours.lat.percentile_us(50.0),
        )
        .floor(floor_lat.percentile_us(50.0), "sled batch+flush p50"),
        Figure::new(
            "  durable turn p99",
            "µs",
            Better::Lower,
            ours.lat.percentile_us(99.0),
        )
        .floor(floor_lat.percentile_us(99.0), "sled batch+flush p99"),
        Figure::new(
            "  reference: raw sled, one batch per write, one flush per group",
            "writes/s",
            Better::Higher,
            per_write.rate,
        )
        .floor(floor.rate, "the raw sled floor above (one batch per group)")
        .share()
        .note(
            "The floor's loop, but applying each caller's write as its own sled batch (as \
             the silo's committer did before it merged each group into one batch); still \
             one flush per group",
        ),
        Figure::new(
            "  reference: the silo's storage alone (`Storage::commit`, 64 callers)",
            "commits/s",
            Better::Higher,
            storage_only.rate,
        )
        .floor(floor.rate, "the raw sled floor above")
        .share()
        .note(
            "`silo.storage.commit(TurnCommit { state })` awaited in a loop by 64 tasks, no \
             wasm: how much of the gap is the storage layer and how much the turn",
        ),
    ]))
}

/// Runs `CALLERS` loops of `op(caller, n)` for `warm + measure`; counts the measured part.
async fn closed_loop<F, Fut>(warm: Duration, measure: Duration, op: F) -> anyhow::Result<Run>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let (op, counting, stop, done) = (op.clone(), counting.clone(), stop.clone(), done.clone());
        tasks.spawn(async move {
            let mut lat = Latencies::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t = Instant::now();
                op(caller, n).await?;
                if counting.load(Ordering::Relaxed) {
                    lat.push(t);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(lat)
        });
    }
    tokio::time::sleep(warm).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(measure).await;
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut lat = Latencies::default();
    while let Some(result) = tasks.join_next().await {
        lat.0.extend(result??.0);
    }
    Ok(Run {
        rate: count as f64 / elapsed.as_secs_f64(),
        lat,
    })
}

async fn silo_turns(silo: &Arc<Silo>, warm: Duration, measure: Duration) -> anyhow::Result<Run> {
    let silo = silo.clone();
    closed_loop(warm, measure, move |caller, _| {
        let silo = silo.clone();
        async move {
            call(&silo, "counter", &format!("w{caller}"), "increment", b"1").await?;
            Ok(())
        }
    })
    .await
}

async fn storage_commits(
    silo: &Arc<Silo>,
    warm: Duration,
    measure: Duration,
) -> anyhow::Result<Run> {
    let silo = silo.clone();
    closed_loop(warm, measure, move |caller, n| {
        let silo = silo.clone();
        async move {
            let mut commit = TurnCommit::new(grain("counter", &format!("s{caller}")));
            commit.state = Some(StateChange::Write(
                format!("{{\"value\":{n}}}").into_bytes(),
            ));
            silo.storage.commit(commit).wait().await?;
            Ok(())
        }
    })
    .await
}

type Job = (Vec<u8>, Vec<u8>, oneshot::Sender<Result<(), String>>);

/// The raw sled loop. With `merge`, the committer writes every waiting caller's key in one
/// batch per flush; without, one batch per caller (the silo's former committer), still one
/// flush per group.
async fn sled_floor(
    dir: &std::path::Path,
    merge: bool,
    warm: Duration,
    measure: Duration,
) -> anyhow::Result<Run> {
    let db = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    let (jobs, rx) = std::sync::mpsc::channel::<Job>();
    let committer = std::thread::spawn(move || {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let applied = if merge {
                let mut batch = sled::Batch::default();
                for (key, value, _) in &group {
                    batch.insert(key.as_slice(), value.as_slice());
                }
                db.apply_batch(batch)
            } else {
                group.iter().try_for_each(|(key, value, _)| {
                    let mut batch = sled::Batch::default();
                    batch.insert(key.as_slice(), value.as_slice());
                    db.apply_batch(batch)
                })
            };
            let result = applied
                .and_then(|()| db.flush().map(|_| ()))
                .map_err(|e| e.to_string());
            for (_, _, done) in group {
                let _ = done.send(result.clone());
            }
        }
    });
    let jobs = Arc::new(jobs);
    let run = {
        let jobs = jobs.clone();
        closed_loop(warm, measure, move |caller, n| {
            let jobs = jobs.clone();
            async move {
                let mut key = b"scounter\0w".to_vec();
                key.extend_from_slice(caller.to_string().as_bytes());
                let value = format!("{{\"value\":{n}}}").into_bytes();
                let (done, acked) = oneshot::channel();
                jobs.send((key, value, done))?;
                acked.await?.map_err(anyhow::Error::msg)
            }
        })
        .await
    };
    drop(jobs);
    let _ = committer.join();
    run
}
