//! Calls between grains (`call` with cycle detection) and one-way `send` through the
//! outbox (committed with the sender's turn, never from a failed one).

use std::time::{Duration, Instant};

use granary_tests::TestSilo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grain_reads_another_through_call() {
    let silo = TestSilo::start().await;
    assert_eq!(
        silo.call("ledger/bob", "deposit", "30").await,
        (200, "30".into())
    );
    let (status, body) = silo
        .call("ledger/alice", "peek", r#"{"account":"bob"}"#)
        .await;
    assert_eq!((status, body.as_str()), (200, "30"));
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_cycles_fail_at_once() {
    let silo = TestSilo::start().await;
    let started = Instant::now();
    let (status, body) = silo
        .call("ledger/alice", "mirror", r#"{"account":"bob"}"#)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cycle must not wait for a timeout"
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("cycle") && body.contains("ledger/alice -> ledger/bob -> ledger/alice"),
        "{body}"
    );

    let (status, body) = silo.call("probe/me", "call_self", "").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("cycle"), "{body}");
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_are_delivered_after_commit_and_never_from_a_failed_turn() {
    let silo = TestSilo::start().await;
    let (status, body) = silo
        .call("probe/sender", "send_then_fail", "\"target\"")
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        silo.call("probe/sender", "send_to", r#"{"key":"other","value":9}"#)
            .await
            .0,
        200
    );
    wait_for(&silo, "probe/other", "get", "9").await;
    // Give a wrongly delivered send from the failed turn every chance to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        silo.call("probe/target", "get", "").await,
        (200, "0".into())
    );
    assert!(
        silo.silo
            .storage
            .pending_sends(None, 10)
            .unwrap()
            .is_empty()
    );
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_conserve_money() {
    let silo = TestSilo::start().await;
    assert_eq!(silo.call("ledger/alice", "deposit", "100").await.0, 200);
    let (status, body) = silo
        .call("ledger/alice", "transfer", r#"{"to":"bob","amount":30}"#)
        .await;
    assert_eq!((status, body.as_str()), (200, "70"));
    let (status, body) = silo
        .call("ledger/alice", "transfer", r#"{"to":"bob","amount":500}"#)
        .await;
    assert_eq!(status, 422);
    assert!(body.contains("insufficient funds"), "{body}");
    wait_for(&silo, "ledger/bob", "balance", "30").await;
    assert_eq!(
        silo.call("ledger/alice", "balance", "").await,
        (200, "70".into())
    );
    silo.shutdown().await;
}

pub async fn wait_for(silo: &TestSilo, target: &str, method: &str, expected: &str) {
    let mut last = (0, String::new());
    for _ in 0..200 {
        last = silo.call(target, method, "").await;
        if last == (200, expected.to_owned()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{target} {method}: expected {expected}, last saw {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_conserve_money() {
    let silo = TestSilo::start().await;
    for a in 0..10 {
        assert_eq!(
            silo.call(&format!("ledger/acct{a}"), "deposit", "1000")
                .await
                .0,
            200
        );
    }
    let mut clients = Vec::new();
    for c in 0..6usize {
        let (http, base) = (silo.client.clone(), silo.base.clone());
        clients.push(tokio::spawn(async move {
            let mut i = c;
            for _ in 0..100 {
                i += 7;
                let from = i % 10;
                let to = (i * 3 + 1) % 10;
                if from == to {
                    continue;
                }
                let amount = if i % 5 == 0 {
                    1_000_000
                } else {
                    (i % 50) as u64 + 1
                };
                let body = format!(r#"{{"to":"acct{to}","amount":{amount}}}"#);
                let (s, b) = granary_tests::post(
                    &http,
                    &base,
                    &format!("ledger/acct{from}"),
                    "transfer",
                    &body,
                )
                .await;
                assert!(s == 200 || s == 422, "{s} {b}");
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    // Credits are delivered after the debits committed; wait for the outbox to empty.
    for _ in 0..200 {
        if silo.silo.storage.pending_sends(None, 1).unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut total = 0;
    for a in 0..10 {
        total += silo
            .call(&format!("ledger/acct{a}"), "balance", "")
            .await
            .1
            .parse::<u64>()
            .unwrap();
    }
    assert_eq!(total, 10000);
    silo.shutdown().await;
}
