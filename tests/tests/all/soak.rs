//! The crash loop: a real `granary serve` under a concurrent write load (counters, ledger
//! transfers, reminders every 100 ms) is killed with SIGKILL at a random moment, restarted
//! and verified, `GRANARY_SOAK_ROUNDS` times (3 by default; `cargo xtask soak --rounds N`
//! runs more).
//!
//! After every restart: no acknowledged increment is lost (each counter holds at least its
//! last acknowledged value, and at most one more: the increment in flight at the kill), the
//! ledger's total is conserved once the outbox drains (no credit lost or applied twice),
//! and no reminder tick was applied twice or skipped without being reported as missed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use granary_tests::{
    ChildSilo, grains_dir, ledger_fund, ledger_total_settled, post, spawn_transfers,
    start_tick_reminders,
};

const COUNTERS: usize = 4;
const ACCOUNTS: usize = 8;
const INITIAL: u64 = 1_000;
const TICKING: usize = 8;

fn rounds() -> u32 {
    std::env::var("GRANARY_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// What one round's load achieved before the kill.
#[derive(Default)]
struct Load {
    /// Highest value acknowledged per counter.
    acked: Vec<u64>,
    transfers: u64,
    refused: u64,
    unexpected: Vec<String>,
    killed_after_ms: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop() {
    let rounds = rounds();
    let started = Instant::now();
    let grains = grains_dir(&["counter", "ledger", "probe"]);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let env = [("GRANARY_MIN_REMINDER_PERIOD_MS", "100")];
    let http = reqwest::Client::new();

    // Set-up: the accounts' money and the ticking reminders.
    let silo = ChildSilo::spawn(grains.path(), &data_dir, &env);
    ledger_fund(&http, &silo.base, ACCOUNTS, INITIAL).await;
    start_tick_reminders(&http, &silo.base, TICKING).await;
    let mut silo = Some(silo);

    let mut baseline = [0u64; COUNTERS];
    let mut ticks_seen = [0u64; TICKING];
    let (mut kills, mut increments, mut transfers) = (0u32, 0u64, 0u64);
    for round in 0..rounds {
        let running = silo.take().expect("a running silo");
        let load = load_until_killed(&http, running, &baseline).await;
        kills += 1;
        assert!(
            load.unexpected.is_empty(),
            "round {round}: unexpected answers: {:?}\nsilo log about them:\n{}",
            load.unexpected,
            incidents_in_log(&data_dir.with_extension("log"), &load.unexpected)
        );

        let restarted = ChildSilo::spawn(grains.path(), &data_dir, &env);
        // Counters: nothing acknowledged is lost; at most the one in-flight write landed.
        let mut round_increments = 0;
        for (c, base) in baseline.iter_mut().enumerate() {
            let (status, body) =
                post(&http, &restarted.base, &format!("counter/s{c}"), "get", "").await;
            assert_eq!(status, 200, "{body}");
            let value: u64 = body.parse().unwrap();
            let acked = load.acked[c];
            assert!(
                value >= acked,
                "round {round}: counter s{c} lost acknowledged writes: acknowledged {acked}, found {value}"
            );
            assert!(
                value <= acked.max(*base) + 1,
                "round {round}: counter s{c} holds {value}, more than acknowledged ({acked}) + 1"
            );
            round_increments += acked.saturating_sub(*base);
            *base = value;
        }
        // Ledger: conserved once the outbox has delivered every committed credit.
        let expected = INITIAL * ACCOUNTS as u64;
        let total = ledger_total_settled(&http, &restarted.base, ACCOUNTS, expected).await;
        assert_eq!(total, expected, "round {round}: money not conserved");
        increments += round_increments;
        transfers += load.transfers;
        // Reminders: ticks are never applied twice nor skipped silently, and never undone.
        for (g, seen) in ticks_seen.iter_mut().enumerate() {
            let (status, body) =
                post(&http, &restarted.base, &format!("probe/r{g}"), "state", "").await;
            assert_eq!(status, 200, "{body}");
            let state: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(
                state.get("reminder_doubled").is_none(),
                "round {round}: a reminder tick was applied twice: {state}"
            );
            assert!(
                state.get("reminder_gaps").is_none(),
                "round {round}: a reminder tick was lost: {state}"
            );
            let ticks = state["reminder_ticks"].as_u64().unwrap_or(0);
            assert!(
                ticks >= *seen,
                "round {round}: probe/r{g}'s committed reminder ticks went back from {seen} to {ticks}"
            );
            *seen = ticks;
        }
        eprintln!(
            "soak round {}/{rounds}: killed after {} ms; {} increments and {} transfers acknowledged ({} refused on purpose), all verified",
            round + 1,
            load.killed_after_ms,
            round_increments,
            load.transfers,
            load.refused
        );
        silo = Some(restarted);
    }
    let ticks: u64 = ticks_seen.iter().sum();
    assert!(ticks > 0, "no reminder ever ticked");
    println!(
        "soak: rounds={rounds} kills={kills} writes_verified={} lost=0",
        increments + transfers
    );
    println!(
        "soak detail: increments={increments} transfers={transfers} reminder_ticks={ticks} elapsed={:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The silo log's lines about the incidents named in `answers` (each trap is logged with
/// its incident id and the cause a few lines below).
fn incidents_in_log(log: &std::path::Path, answers: &[String]) -> String {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let mut out = Vec::new();
    for answer in answers.iter().take(3) {
        let Some(id) = answer
            .split("\"incident\":\"")
            .nth(1)
            .and_then(|r| r.get(..8))
        else {
            continue;
        };
        if let Some(at) = lines.iter().position(|l| l.contains(id)) {
            out.extend(
                lines[at.saturating_sub(3)..(at + 30).min(lines.len())]
                    .iter()
                    .copied(),
            );
            out.push("…");
        }
    }
    // Answers without an incident (503s): the warnings and errors say why.
    let problems: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    out.push("last warnings and errors:");
    out.extend(
        problems[problems.len().saturating_sub(40)..]
            .iter()
            .copied(),
    );
    out.join("\n")
}

/// Runs the write load against `silo` and kills it with SIGKILL at a random moment.
async fn load_until_killed(http: &reqwest::Client, silo: ChildSilo, baseline: &[u64]) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicU64>> =
        Arc::new(baseline.iter().map(|v| AtomicU64::new(*v)).collect());
    let unexpected = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for c in 0..COUNTERS {
        let (http, base, stop, acked, unexpected) = (
            http.clone(),
            silo.base.clone(),
            stop.clone(),
            acked.clone(),
            unexpected.clone(),
        );
        clients.push(tokio::spawn(async move {
            let url = format!("{base}/v1/grains/counter/s{c}/increment");
            while !stop.load(Ordering::Relaxed) {
                match http.post(&url).body("1").send().await {
                    Ok(r) if r.status() == 200 => {
                        let Ok(text) = r.text().await else { break };
                        let value: u64 = text.parse().unwrap();
                        acked[c].fetch_max(value, Ordering::SeqCst);
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        unexpected
                            .lock()
                            .unwrap()
                            .push(format!("increment: {status} {text}"));
                    }
                    Err(_) => break, // killed
                }
            }
        }));
    }
    let (transfers, transfer_clients) = spawn_transfers(http, &silo.base, 3, ACCOUNTS, &stop);
    clients.extend(transfer_clients);
    let kill_after = rand::random_range(300..1500);
    tokio::time::sleep(Duration::from_millis(kill_after)).await;
    silo.kill9();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let mut unexpected = std::mem::take(&mut *unexpected.lock().unwrap());
    unexpected.extend(
        transfers
            .take_unexpected()
            .into_iter()
            .map(|answer| format!("transfer: {answer}")),
    );
    Load {
        acked: acked.iter().map(|a| a.load(Ordering::SeqCst)).collect(),
        transfers: transfers.moved.load(Ordering::Relaxed),
        refused: transfers.refused.load(Ordering::Relaxed),
        unexpected,
        killed_after_ms: kill_after,
    }
}
