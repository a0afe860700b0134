//! Activation lifecycle: idle deactivation, reactivation from committed state, LRU
//! eviction at `max_activations`.

use std::time::{Duration, Instant};

use granary_tests::TestSilo;

async fn active_keys(silo: &TestSilo) -> Vec<String> {
    let (_, body) = silo.get("/v1/grains").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["activations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{}/{}",
                a["kind"].as_str().unwrap(),
                a["key"].as_str().unwrap()
            )
        })
        .collect()
}

async fn wait_until_inactive(silo: &TestSilo, key: &str) {
    for _ in 0..200 {
        if !active_keys(silo).await.iter().any(|k| k == key) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{key} never deactivated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_activations_deactivate_and_come_back_with_their_state() {
    let silo = TestSilo::start_with(|c| c.idle_timeout_ms = 200).await;
    assert_eq!(silo.call("probe/idle", "set", "41").await.0, 200);
    assert!(active_keys(&silo).await.contains(&"probe/idle".to_string()));
    wait_until_inactive(&silo, "probe/idle").await;

    let (status, stats) = silo.call("probe/idle", "state", "").await;
    assert_eq!(status, 200, "{stats}");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["value"], 41);
    assert_eq!(
        stats["deactivations"], 1,
        "deactivate(idle) ran and committed"
    );
    assert!(
        stats["last_deactivation"]
            .as_str()
            .unwrap()
            .contains("Idle")
    );
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_recently_used_activations_are_evicted_at_the_limit() {
    let silo = TestSilo::start_with(|c| c.max_activations = 3).await;
    for key in ["a", "b", "c"] {
        assert_eq!(silo.call(&format!("probe/{key}"), "set", "1").await.0, 200);
    }
    // Touch `a` so `b` is the least recently used.
    assert_eq!(silo.call("probe/a", "get", "").await.0, 200);
    assert_eq!(silo.call("probe/d", "set", "4").await.0, 200);
    wait_until_inactive(&silo, "probe/b").await;
    let active = active_keys(&silo).await;
    assert!(active.len() <= 3, "{active:?}");
    assert!(active.contains(&"probe/a".to_string()), "{active:?}");
    assert!(active.contains(&"probe/d".to_string()), "{active:?}");

    // The evicted grain ran deactivate(evicted) and comes back with its state.
    let (_, stats) = silo.call("probe/b", "state", "").await;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["value"], 1);
    assert!(
        stats["last_deactivation"]
            .as_str()
            .unwrap()
            .contains("Evicted")
    );
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_silo_with_no_idle_activation_refuses_with_overloaded() {
    let silo = TestSilo::start_with(|c| c.max_activations = 1).await;
    let (http, base) = (silo.client.clone(), silo.base.clone());
    let busy = tokio::spawn(async move {
        granary_tests::post(&http, &base, "probe/busy", "sleep_ms", "1500").await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = silo
        .client
        .post(format!("{}/v1/grains/probe/other/get", silo.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body = response.text().await.unwrap();
    assert!(body.contains("overloaded"), "{body}");
    assert_eq!(busy.await.unwrap().0, 200);
    silo.shutdown().await;
}

/// A call to an idle activation runs its turn in the caller's task. A caller that goes
/// away mid-turn (here a timeout drops its future) must not cut the turn short: the turn
/// finishes and commits, and the next call, queued behind it, sees its write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_finishes_when_its_caller_goes_away() {
    let silo = TestSilo::start().await;
    assert_eq!(silo.call("probe/gone", "set", "1").await, (200, "1".into()));
    let call = silo.silo.call(
        granary::GrainId::parse("probe", "gone").unwrap(),
        "set_slowly".to_owned(),
        br#"{"value":9,"ms":400}"#.to_vec(),
        granary::message::CallChain::default(),
        Instant::now() + Duration::from_secs(10),
    );
    let abandoned = tokio::time::timeout(Duration::from_millis(100), call).await;
    assert!(abandoned.is_err(), "the slow turn answered within 100 ms");
    assert_eq!(silo.call("probe/gone", "get", "").await, (200, "9".into()));
    assert_eq!(silo.stored_probe("gone")["value"], 9);
    silo.shutdown().await;
}
