//! Durable reminders: they fire while the grain is inactive (activating it), commit their
//! next due time with the tick's turn, retry transient failures, keep their history, and
//! only a bounded window of them is held in memory.

use std::time::Duration;

use granary::reminders::{MAX_WINDOW, MissedPolicy, ReminderChange, ReminderRecord, Schedule};
use granary::storage::TurnCommit;
use granary_tests::TestSilo;

async fn reminders_json(silo: &TestSilo, key: &str) -> serde_json::Value {
    let (status, body) = silo.get(&format!("/v1/grains/probe/{key}/reminders")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn fast(c: &mut granary::Config) {
    c.min_reminder_period_ms = 100;
    c.idle_timeout_ms = 150;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_fire_and_reactivate_an_idle_grain() {
    let silo = TestSilo::start_with(fast).await;
    let args = r#"{"name":"beat","due_ms":100,"period_ms":300}"#;
    assert_eq!(silo.call("probe/r", "start_reminder", args).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let state = silo.stored_probe("r");
    let ticks = state["reminder_ticks"].as_u64().unwrap_or(0);
    assert!(ticks >= 3, "{state}");
    assert_eq!(
        state["reminder_doubled"],
        serde_json::Value::Null,
        "{state}"
    );
    // With a 150 ms idle timeout the grain went idle between ticks: each tick reactivated it.
    assert!(state["deactivations"].as_u64().unwrap() >= 2, "{state}");
    assert!(
        state["last_reminder"]
            .as_str()
            .unwrap()
            .starts_with("beat@")
    );

    let listed = reminders_json(&silo, "r").await;
    let beat = &listed["reminders"][0];
    assert_eq!(beat["name"], "beat");
    assert_eq!(beat["schedule"]["every_ms"], 300);
    let history = beat["history"].as_array().unwrap();
    assert!(history.len() as u64 >= ticks.min(16));
    assert!(history.iter().all(|h| h["ok"] == true), "{listed}");

    let (_, metrics) = silo.get("/metrics").await;
    assert!(metrics.contains("outcome=\"fired\"}"), "{metrics}");
    assert!(
        metrics.contains("granary_reminders_stored{silo=\"local\"} 1"),
        "{metrics}"
    );

    assert_eq!(
        silo.call("probe/r", "stop_reminder", "\"beat\"").await.0,
        200
    );
    let listed = reminders_json(&silo, "r").await;
    assert_eq!(listed["reminders"].as_array().unwrap().len(), 0);
    let stopped = silo.stored_probe("r")["reminder_ticks"].clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(silo.stored_probe("r")["reminder_ticks"], stopped);
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_rules() {
    let silo = TestSilo::start().await;
    // Below the default 1 s minimum: a clear guest error.
    let args = r#"{"name":"fast","due_ms":10,"period_ms":500}"#;
    let (status, body) = silo.call("probe/rules", "start_reminder", args).await;
    assert_eq!(status, 422);
    assert!(
        body.contains("minimum") && body.contains("1000 ms"),
        "{body}"
    );
    // A failed turn registers nothing.
    let args = r#"{"name":"ghost","due_ms":10,"period_ms":60000}"#;
    let (status, _) = silo.call("probe/rules", "reminder_then_fail", args).await;
    assert_eq!(status, 422);
    assert_eq!(
        silo.call("probe/rules", "reminders", "").await,
        (200, "[]".into())
    );
    assert_eq!(
        reminders_json(&silo, "rules").await["reminders"],
        serde_json::json!([])
    );
    // Unknown kinds and bad keys are refused by the list API too.
    assert_eq!(silo.get("/v1/grains/nosuch/x/reminders").await.0, 404);
    assert_eq!(silo.get("/v1/grains/probe/a%01b/reminders").await.0, 400);
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_then_recorded_and_moved_on() {
    // One activation slot, held by a long turn: the reminder's grain cannot activate.
    let silo = TestSilo::start_with(|c| {
        fast(c);
        c.max_activations = 1;
        c.idle_timeout_ms = 60_000;
    })
    .await;
    let args = r#"{"name":"blocked","due_ms":1500,"period_ms":60000}"#;
    assert_eq!(
        silo.call("probe/blocked", "start_reminder", args).await.0,
        200
    );
    let (http, base) = (silo.client.clone(), silo.base.clone());
    let hog = tokio::spawn(async move {
        granary_tests::post(&http, &base, "probe/hog", "sleep_ms", "4000").await
    });
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(hog.await.unwrap().0, 200);

    let listed = reminders_json(&silo, "blocked").await;
    let reminder = &listed["reminders"][0];
    let last = reminder["history"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(last["ok"], false, "{listed}");
    assert_eq!(last["attempts"], 5, "{listed}");
    assert!(
        last["error"].as_str().unwrap().contains("overloaded"),
        "{listed}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        reminder["next_due_ms"].as_u64().unwrap() > now,
        "moved to its next period"
    );
    let (_, metrics) = silo.get("/metrics").await;
    assert!(metrics.contains("outcome=\"retried\""), "{metrics}");
    assert!(metrics.contains("outcome=\"failed\""), "{metrics}");
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_reminders_cost_a_bounded_window() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let dir = data_dir.clone();
    let silo = TestSilo::start_with(move |c| c.data_dir = dir).await;
    let due = granary::runtime::host::now_ms() + 50_000;
    for batch in 0..100 {
        let grain = granary::GrainId::parse("probe", &format!("many-{batch}")).unwrap();
        let mut commit = TurnCommit::new(grain);
        commit.reminders = (0..1000)
            .map(|i| {
                ReminderChange::Put(ReminderRecord {
                    name: format!("r{i}"),
                    schedule: Schedule::Every { period_ms: 60_000 },
                    missed: MissedPolicy::FireOnce,
                    next_due_ms: due + i,
                    history: Default::default(),
                })
            })
            .collect();
        silo.silo.storage.commit(commit).wait().await.unwrap();
    }
    assert_eq!(silo.silo.storage.reminder_count(), 100_000);
    // A restart loads the window from the index; the count survives in the header.
    silo.shutdown().await;
    let again = TestSilo::start_with(|c| c.data_dir = data_dir).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(again.silo.storage.reminder_count(), 100_000);
    assert_eq!(again.silo.reminders.window_len(), MAX_WINDOW);
    again.shutdown().await;
}
