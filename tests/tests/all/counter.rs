//! The counter example through the gateway: durable increments, concurrent callers.

use granary_tests::TestSilo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_are_persisted_and_read_back() {
    let silo = TestSilo::start().await;
    assert_eq!(
        silo.call("counter/alice", "increment", "5").await,
        (200, "5".into())
    );
    assert_eq!(
        silo.call("counter/alice", "increment", "5").await,
        (200, "10".into())
    );
    assert_eq!(
        silo.call("counter/alice", "increment", "").await,
        (200, "11".into())
    );
    assert_eq!(
        silo.call("counter/alice", "get", "").await,
        (200, "11".into())
    );
    assert_eq!(silo.call("counter/bob", "get", "").await, (200, "0".into()));
    assert_eq!(
        silo.call("counter/alice", "reset", "").await,
        (200, "0".into())
    );
    let state = silo
        .silo
        .storage
        .load_state(&granary::GrainId::parse("counter", "alice").unwrap())
        .unwrap();
    assert!(state.is_some(), "reset must persist the zeroed state");
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_lose_nothing() {
    let silo = TestSilo::start().await;
    let mut tasks = Vec::new();
    for client in 0..8 {
        let (http, base) = (silo.client.clone(), silo.base.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let (status, _) =
                    granary_tests::post(&http, &base, "counter/shared", "increment", "1").await;
                assert_eq!(status, 200);
                let (status, _) = granary_tests::post(
                    &http,
                    &base,
                    &format!("counter/own-{client}"),
                    "increment",
                    "2",
                )
                .await;
                assert_eq!(status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(silo.call("counter/shared", "get", "").await.1, "200");
    for client in 0..8 {
        assert_eq!(
            silo.call(&format!("counter/own-{client}"), "get", "")
                .await
                .1,
            "50"
        );
    }
    let (_, metrics) = silo.get("/metrics").await;
    assert!(
        metrics.contains("granary_calls_total{") && metrics.contains("kind=\"counter\""),
        "{metrics}"
    );
    assert!(metrics.contains("granary_storage_flush_duration_seconds_count"));
    assert!(metrics.contains("granary_activations"));
    silo.shutdown().await;
}
