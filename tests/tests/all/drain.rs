//! Drain with a real `granary serve` process and real signals: readiness drops at once,
//! in-flight calls finish, new ones are refused, timers stop, every activation
//! deactivates, the process exits 0, and a restart finds every acknowledged write.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use granary::GrainId;
use granary::storage::{SledStorage, Storage};
use granary_tests::{ChildSilo, grains_dir, http_get, post};

const PROBES: usize = 800;
const WORKERS: usize = 200;
const IN_FLIGHT: usize = 16;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Reads committed state straight from the data directory of a stopped silo.
fn committed(data: &Path, kind: &str, key: &str) -> serde_json::Value {
    let storage = granary_tests::open_store(&data.join("db")).unwrap();
    read(&storage, kind, key)
}

fn read(storage: &SledStorage, kind: &str, key: &str) -> serde_json::Value {
    let bytes = storage
        .load_state(&GrainId::parse(kind, key).unwrap())
        .unwrap()
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_drill() {
    let grains = grains_dir(&["probe", "sync-worker"]);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let env = [("GRANARY_MIN_REMINDER_PERIOD_MS", "100")];
    let mut silo = ChildSilo::spawn(grains.path(), &data_dir, &env);
    let http = reqwest::Client::new();
    for i in 0..PROBES {
        let (status, _) = post(
            &http,
            &silo.base,
            &format!("probe/p{i}"),
            "set",
            &i.to_string(),
        )
        .await;
        assert_eq!(status, 200);
    }
    for w in 0..WORKERS {
        let args = r#"{"every_ms":100,"keepalive_secs":1}"#;
        let (status, body) = post(
            &http,
            &silo.base,
            &format!("sync-worker/w{w}"),
            "start",
            args,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_flight: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let (http, base) = (http.clone(), silo.base.clone());
            tokio::spawn(async move {
                post(&http, &base, &format!("probe/slow{i}"), "sleep_ms", "1500").await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled_ms = now_ms();
    let signalled = Instant::now();
    silo.signal("TERM");
    let silo_ref = Arc::new(silo.base.clone());
    let readyz_after = tokio::task::spawn_blocking({
        let base = silo_ref.clone();
        move || poll_status(&base, "/readyz", 503)
    })
    .await
    .unwrap();
    let ready_dropped_in = signalled.elapsed();
    assert!(readyz_after.is_some(), "/readyz never turned 503");
    assert!(
        ready_dropped_in < Duration::from_millis(500),
        "/readyz took {ready_dropped_in:?} to turn 503"
    );
    eprintln!("/readyz turned 503 {ready_dropped_in:?} after SIGTERM");
    assert_eq!(
        silo.status("/healthz"),
        Some(200),
        "/healthz stays 200 while draining"
    );

    let refused = http
        .post(format!("{}/v1/grains/probe/new/set", silo.base))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(refused.text().await.unwrap().contains("draining"));

    for call in in_flight {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200, "an in-flight call must complete: {body}");
    }
    let exit = silo.wait_exit(Duration::from_secs(25));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", silo.log_text());
    eprintln!("drain finished {:?} after SIGTERM", signalled.elapsed());

    let stopped_ms = admission_stopped_ms(&silo.log_text());
    let mut runs_before = Vec::new();
    {
        let storage = granary_tests::open_store(&data_dir.join("db")).unwrap();
        for i in 0..PROBES {
            let state = read(&storage, "probe", &format!("p{i}"));
            assert_eq!(state["value"], i as u64, "acknowledged write lost: {state}");
            assert_eq!(
                state["deactivations"], 1,
                "deactivate(drain) did not run: {state}"
            );
            assert_eq!(state["last_deactivation"], "Drain");
        }
        for w in 0..WORKERS {
            let state = read(&storage, "sync-worker", &format!("w{w}"));
            runs_before.push(state["runs"].as_u64().unwrap());
            let last = state["last_run_ms"].as_u64().unwrap_or(0);
            assert!(state["runs"].as_u64().unwrap() > 0, "{state}");
            // A tick already running when admission stopped may finish (the worker records
            // its time as it runs, and a loaded 2-core machine can delay that by a few
            // hundred ms); none starts after. The drain lasts over a second longer (the
            // in-flight calls), so timers that kept running would show up here.
            assert!(
                last <= stopped_ms + 500,
                "a timer tick ran {} ms after admission stopped: {state}",
                last.saturating_sub(stopped_ms)
            );
            assert!(
                last > signalled_ms.saturating_sub(2_000),
                "the worker was running: {state}"
            );
        }
    }

    // After a restart the reminders bring the workers back without any call.
    let restarted = Instant::now();
    let silo = ChildSilo::spawn(grains.path(), &data_dir, &env);
    eprintln!("restart to ready: {:?}", restarted.elapsed());
    let mut active_workers = 0;
    for _ in 0..100 {
        let (_, body) = http_get(&http, &silo.base, "/v1/grains").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        active_workers = v["activations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "sync-worker")
            .count();
        if active_workers == WORKERS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        active_workers, WORKERS,
        "reminders did not reactivate every worker"
    );
}

/// When the silo logged that it stopped admitting work (drain step 3).
fn admission_stopped_ms(log: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("admission stopped"))
        .unwrap_or_else(|| panic!("no 'admission stopped' line in the log:\n{log}"));
    let stamp = line.split_whitespace().next().unwrap();
    chrono::DateTime::parse_from_rfc3339(stamp)
        .unwrap_or_else(|e| panic!("bad timestamp {stamp:?}: {e}"))
        .timestamp_millis() as u64
}

fn poll_status(base: &str, path: &str, want: u16) -> Option<Duration> {
    let started = Instant::now();
    let silo_addr = base.trim_start_matches("http://").to_owned();
    while started.elapsed() < Duration::from_secs(5) {
        if status_of(&silo_addr, path) == Some(want) {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn status_of(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_ignoring_cancellation_is_interrupted_and_commits_nothing() {
    let grains = grains_dir(&["probe"]);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let env = [
        ("GRANARY_TURN_TIMEOUT_MS", "60000"),
        ("GRANARY_TURN_GRACE_MS", "500"),
    ];
    let mut silo = ChildSilo::spawn(grains.path(), &data_dir, &env);
    let http = reqwest::Client::new();
    assert_eq!(
        post(&http, &silo.base, "probe/stuck", "set", "5").await.0,
        200
    );
    let spinning = {
        let (http, base) = (http.clone(), silo.base.clone());
        tokio::spawn(async move { post(&http, &base, "probe/stuck", "set_then_spin", "9").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    silo.signal("TERM");
    let (status, body) = spinning.await.unwrap();
    assert_eq!(
        status, 503,
        "the interrupted call is told the silo is draining: {body}"
    );
    let exit = silo.wait_exit(Duration::from_secs(20));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", silo.log_text());
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "drain overran: {:?}",
        signalled.elapsed()
    );
    assert!(silo.log_text().contains("interrupting turns still running"));
    assert_eq!(committed(&data_dir, "probe", "stuck")["value"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_or_trapping_deactivate_does_not_stop_the_others() {
    let grains = grains_dir(&["probe"]);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let env = [("GRANARY_TURN_TIMEOUT_MS", "1000")];
    let mut silo = ChildSilo::spawn(grains.path(), &data_dir, &env);
    let http = reqwest::Client::new();
    assert_eq!(
        post(
            &http,
            &silo.base,
            "probe/hangs",
            "set_on_deactivate",
            "\"hang\""
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            &http,
            &silo.base,
            "probe/traps",
            "set_on_deactivate",
            "\"trap\""
        )
        .await
        .0,
        200
    );
    for i in 0..20 {
        assert_eq!(
            post(&http, &silo.base, &format!("probe/fine{i}"), "set", "1")
                .await
                .0,
            200
        );
    }
    silo.signal("TERM");
    let exit = silo.wait_exit(Duration::from_secs(20));
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", silo.log_text());
    let storage = granary_tests::open_store(&data_dir.join("db")).unwrap();
    for i in 0..20 {
        assert_eq!(
            read(&storage, "probe", &format!("fine{i}"))["deactivations"],
            1
        );
    }
    assert_eq!(read(&storage, "probe", "hangs")["deactivations"], 0);
    assert_eq!(read(&storage, "probe", "traps")["deactivations"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_forces_a_prompt_exit_after_a_flush() {
    let grains = grains_dir(&["probe"]);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let env = [
        ("GRANARY_TURN_TIMEOUT_MS", "60000"),
        ("GRANARY_TURN_GRACE_MS", "20000"),
    ];
    let mut silo = ChildSilo::spawn(grains.path(), &data_dir, &env);
    let http = reqwest::Client::new();
    assert_eq!(
        post(&http, &silo.base, "probe/kept", "set", "7").await.0,
        200
    );
    let _spinning = {
        let (http, base) = (http.clone(), silo.base.clone());
        tokio::spawn(async move { post(&http, &base, "probe/stuck", "spin", "").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    silo.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        silo.wait_exit(Duration::from_millis(10)).is_none(),
        "the first signal drains, waiting for the turn"
    );
    let second = Instant::now();
    silo.signal("TERM");
    let exit = silo.wait_exit(Duration::from_secs(5));
    assert!(exit.is_some(), "the second signal must force an exit");
    assert_ne!(
        exit.unwrap().code(),
        Some(0),
        "a forced exit is not a clean drain"
    );
    eprintln!("forced exit {:?} after the second signal", second.elapsed());
    assert!(silo.log_text().contains("second signal"));
    assert_eq!(committed(&data_dir, "probe", "kept")["value"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_waits_for_the_data_directory_then_takes_over() {
    let grains = grains_dir(&["counter"]);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let mut first = ChildSilo::spawn(grains.path(), &data_dir, &[]);
    let http = reqwest::Client::new();
    assert_eq!(
        post(&http, &first.base, "counter/c", "increment", "3")
            .await
            .0,
        200
    );

    let second = ChildSilo::spawn_unready(grains.path(), &data_dir, &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(second.status("/healthz"), Some(200), "alive while waiting");
    assert_eq!(
        second.status("/readyz"),
        Some(503),
        "not ready while waiting"
    );
    assert!(
        second.log_text().contains("data directory is locked"),
        "{}",
        second.log_text()
    );

    first.signal("TERM");
    assert_eq!(
        first
            .wait_exit(Duration::from_secs(20))
            .and_then(|s| s.code()),
        Some(0)
    );
    second.wait_ready(Duration::from_secs(30));
    assert_eq!(
        post(&http, &second.base, "counter/c", "get", "").await,
        (200, "3".into())
    );
}
