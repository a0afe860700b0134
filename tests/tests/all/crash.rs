//! Crash safety with a real `granary serve` process killed by SIGKILL: every acknowledged
//! write survives, and money in the ledger is conserved with no credit applied twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use granary_tests::{
    ChildSilo, grains_dir, http_get, ledger_fund, ledger_total_settled, post, spawn_transfers,
    start_tick_reminders,
};

const CLIENTS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_increments_survive_kill_9() {
    let grains = grains_dir(&["counter"]);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let silo = ChildSilo::spawn(grains.path(), &data_dir, &[]);
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, base, stop, acked) =
            (http.clone(), silo.base.clone(), stop.clone(), acked.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let url = format!("{base}/v1/grains/counter/c{c}/increment");
                match http.post(url).body("1").send().await {
                    Ok(r) if r.status() == 200 => {
                        let value: u64 = r.text().await.unwrap().parse().unwrap();
                        acked[c].store(value, Ordering::SeqCst);
                    }
                    _ => break, // the server is gone
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    silo.kill9();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let silo = ChildSilo::spawn(grains.path(), &data_dir, &[]);
    let mut total_acked = 0;
    for c in 0..CLIENTS {
        let acked = acked[c].load(Ordering::SeqCst);
        total_acked += acked;
        let (status, body) = post(&http, &silo.base, &format!("counter/c{c}"), "get", "").await;
        assert_eq!(status, 200);
        let value: u64 = body.parse().unwrap();
        // At most the one increment in flight at the kill may have landed unacknowledged.
        assert!(
            value == acked || value == acked + 1,
            "client {c}: acknowledged {acked}, found {value}"
        );
    }
    assert!(
        total_acked > 0,
        "the load must have made progress before the kill"
    );
}

const ACCOUNTS: usize = 10;
const INITIAL: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_total_is_conserved_across_kill_9() {
    let grains = grains_dir(&["ledger"]);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let silo = ChildSilo::spawn(grains.path(), &data_dir, &[]);
    let http = reqwest::Client::new();
    ledger_fund(&http, &silo.base, ACCOUNTS, INITIAL).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (transfers, clients) = spawn_transfers(&http, &silo.base, CLIENTS, ACCOUNTS, &stop);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    silo.kill9();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let unexpected = transfers.take_unexpected();
    assert!(unexpected.is_empty(), "unexpected answers {unexpected:?}");
    assert!(
        transfers.moved.load(Ordering::Relaxed) > 0,
        "no transfer went through before the kill"
    );
    assert!(
        transfers.refused.load(Ordering::Relaxed) > 0,
        "no transfer was refused on purpose"
    );

    let silo = ChildSilo::spawn(grains.path(), &data_dir, &[]);
    let expected = INITIAL * ACCOUNTS as u64;
    let total = ledger_total_settled(&http, &silo.base, ACCOUNTS, expected).await;
    assert_eq!(
        total, expected,
        "money lost: the outbox never delivered every credit"
    );
}

const TICKING: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminder_ticks_apply_exactly_once_across_kill_9() {
    let grains = grains_dir(&["probe"]);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let env = [("GRANARY_MIN_REMINDER_PERIOD_MS", "100")];
    let silo = ChildSilo::spawn(grains.path(), &data_dir, &env);
    let http = reqwest::Client::new();
    start_tick_reminders(&http, &silo.base, TICKING).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    silo.kill9();
    // Downtime: every reminder misses periods and must report them, not replay them.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let silo = ChildSilo::spawn(grains.path(), &data_dir, &env);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut missed_reported = false;
    for g in 0..TICKING {
        let (status, body) = post(&http, &silo.base, &format!("probe/r{g}"), "state", "").await;
        assert_eq!(status, 200, "{body}");
        let state: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            state["reminder_ticks"].as_u64().unwrap_or(0) >= 10,
            "{state}"
        );
        assert!(
            state.get("reminder_doubled").is_none(),
            "a tick was applied twice: {state}"
        );
        assert!(
            state.get("reminder_gaps").is_none(),
            "a tick was lost: {state}"
        );
        let (_, listed) = http_get(
            &http,
            &silo.base,
            &format!("/v1/grains/probe/r{g}/reminders"),
        )
        .await;
        missed_reported |= listed.contains("\"ok\":true");
    }
    assert!(missed_reported);
}
