//! Volatile timers: ticks are turns (they coalesce, never pile up), their writes commit,
//! and they stop when the activation deactivates.

use std::time::{Duration, Instant};

use granary_tests::TestSilo;

async fn state(silo: &TestSilo, target: &str) -> serde_json::Value {
    let (status, body) = silo.call(target, "state", "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_ticks_commit_and_coalesce_while_a_turn_runs() {
    let silo = TestSilo::start().await;
    let args = r#"{"name":"fast","due_ms":10,"period_ms":10}"#;
    assert_eq!(silo.call("probe/t", "start_timer", args).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = state(&silo, "probe/t").await["timer_ticks"]
        .as_u64()
        .unwrap();
    assert!(
        before >= 3,
        "a 10 ms timer ticked only {before} times in 200 ms"
    );
    // The tick writes are durable like any turn's.
    assert!(silo.stored_probe("t")["timer_ticks"].as_u64().unwrap() >= before);

    // A 400 ms turn holds the grain: ~40 periods pass, at most one tick follows it. Ticks
    // outside the turn are allowed, one per period of the time spent outside it (a loaded
    // machine stretches that); a burst would add ~40 at once.
    let window = Instant::now();
    let at_start = state(&silo, "probe/t").await["timer_ticks"]
        .as_u64()
        .unwrap();
    let (status, _) = silo.call("probe/t", "sleep_ms", "400").await;
    assert_eq!(status, 200);
    let just_after = state(&silo, "probe/t").await["timer_ticks"]
        .as_u64()
        .unwrap();
    let outside_ms = (window.elapsed().as_millis() as u64).saturating_sub(400);
    assert!(
        just_after <= at_start + outside_ms / 10 + 3,
        "missed ticks must coalesce, not burst: {at_start} -> {just_after} ({outside_ms} ms outside the turn)"
    );

    assert_eq!(silo.call("probe/t", "stop_timer", "\"fast\"").await.0, 200);
    let stopped = state(&silo, "probe/t").await["timer_ticks"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        state(&silo, "probe/t").await["timer_ticks"]
            .as_u64()
            .unwrap(),
        stopped
    );
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_stop_when_the_activation_is_evicted() {
    let silo = TestSilo::start_with(|c| c.max_activations = 1).await;
    let args = r#"{"name":"tick","due_ms":5,"period_ms":5}"#;
    assert_eq!(silo.call("probe/ticking", "start_timer", args).await.0, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another grain needs the only slot: the ticking one is evicted, and its timer with it.
    assert_eq!(silo.call("probe/other", "set", "1").await.0, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_eviction = silo.stored_probe("ticking");
    assert_eq!(
        after_eviction["last_deactivation"], "Evicted",
        "{after_eviction}"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        silo.stored_probe("ticking")["timer_ticks"],
        after_eviction["timer_ticks"]
    );
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_limits_are_clear_guest_errors() {
    let silo = TestSilo::start().await;
    let args = r#"{"name":"","due_ms":5,"period_ms":5}"#;
    let (status, body) = silo.call("probe/l", "start_timer", args).await;
    assert_eq!(status, 422);
    assert!(body.contains("invalid name"), "{body}");
    for i in 0..64 {
        let args = format!(r#"{{"name":"t{i}","due_ms":60000,"period_ms":60000}}"#);
        assert_eq!(silo.call("probe/l", "start_timer", &args).await.0, 200);
    }
    let args = r#"{"name":"one-too-many","due_ms":5,"period_ms":5}"#;
    let (status, body) = silo.call("probe/l", "start_timer", args).await;
    assert_eq!(status, 422);
    assert!(body.contains("at most 64 timers"), "{body}");
    silo.shutdown().await;
}
