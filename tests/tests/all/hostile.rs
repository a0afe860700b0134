//! Hostile guests: a grain is untrusted code, and one bad grain must never cost another
//! grain its state or its service, nor the silo its process. Each test is one attack, run
//! by the `probe` test grain (or a hand-written WAT component), followed by proof that the
//! attacker got nothing and that the silo, the attacker's committed state and a neighbour
//! grain are intact.

use std::time::{Duration, Instant};

use granary::GrainId;
use granary_tests::{ChildSilo, TestSilo, error_code, grains_dir, post};

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The silo still serves: a neighbour grain answers and its state is what it was.
async fn neighbour_is_intact(silo: &TestSilo, expected: u64) {
    assert_eq!(
        silo.call("counter/neighbour", "get", "").await,
        (200, expected.to_string()),
        "the neighbour grain lost its state or its service"
    );
    assert_eq!(silo.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb() {
    let silo = TestSilo::start().await;
    assert_eq!(
        silo.call("counter/neighbour", "increment", "3").await,
        (200, "3".into())
    );
    assert_eq!(silo.call("probe/bomb", "set", "5").await, (200, "5".into()));
    // Within the 64 MiB default: fine.
    assert_eq!(
        silo.call("probe/bomb", "alloc_mib", "16").await,
        (200, (16u64 << 20).to_string())
    );

    let (status, body) = silo.call("probe/bomb", "alloc_mib", "200").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (500, "memory"),
        "{body}"
    );
    let v = json(&body);
    assert_eq!(
        v["incident"].as_str().unwrap_or_default().len(),
        8,
        "{body}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("memory limit"),
        "{body}"
    );

    // Ten bombs at once, beside the neighbour: each is refused, the neighbour is served.
    let bombs: Vec<_> = (0..10)
        .map(|i| {
            let (http, base) = (silo.client.clone(), silo.base.clone());
            tokio::spawn(async move {
                post(&http, &base, &format!("probe/bomb{i}"), "alloc_mib", "1000").await
            })
        })
        .collect();
    for i in 0..10 {
        let (status, _) = silo.call("counter/neighbour", "increment", "1").await;
        assert_eq!(status, 200, "neighbour call {i} failed during the bombing");
    }
    for bomb in bombs {
        let (status, body) = bomb.await.unwrap();
        assert_eq!(
            (status, error_code(&body).as_str()),
            (500, "memory"),
            "{body}"
        );
    }

    // The bomb reactivates from committed state in a fresh instance.
    assert_eq!(silo.call("probe/bomb", "get", "").await, (200, "5".into()));
    neighbour_is_intact(&silo, 13).await;
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_overflow() {
    let grains = grains_dir(&["probe", "counter"]);
    let data = tempfile::tempdir().unwrap();
    let silo = ChildSilo::spawn(grains.path(), &data.path().join("data"), &[]);
    let http = reqwest::Client::new();
    let call = |target: &'static str, method: &'static str, body: &'static str| {
        let (http, base) = (http.clone(), silo.base.clone());
        async move { post(&http, &base, target, method, body).await }
    };
    assert_eq!(
        call("counter/neighbour", "increment", "1").await,
        (200, "1".into())
    );
    assert_eq!(call("probe/deep", "set", "9").await, (200, "9".into()));
    // A bounded recursion is fine (the sum 1..=100).
    assert_eq!(
        call("probe/deep", "recurse", "100").await,
        (200, "5050".into())
    );
    for _ in 0..3 {
        let (status, body) = call("probe/deep", "recurse", "100000000").await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (500, "trapped"),
            "{body}"
        );
    }
    assert_eq!(call("probe/deep", "get", "").await, (200, "9".into()));
    assert_eq!(
        call("counter/neighbour", "get", "").await,
        (200, "1".into())
    );
    let log = silo.log_text();
    assert_eq!(
        log.matches("call stack exhausted").count(),
        3,
        "each overflow is logged as such:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapped_store_is_never_reused() {
    let silo = TestSilo::start().await;
    assert_eq!(silo.call("probe/t", "set", "3").await, (200, "3".into()));
    for _ in 0..3 {
        let (status, body) = silo.call("probe/t", "set_then_trap", "99").await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (500, "trapped"),
            "{body}"
        );
        // The trapped instance holds 99 in its memory; a fresh one reads the committed 3.
        assert_eq!(silo.call("probe/t", "get", "").await, (200, "3".into()));
    }
    // A trap is not a deactivation: the discarded instance's `on_deactivate` never ran.
    let (_, state) = silo.call("probe/t", "state", "").await;
    assert_eq!(json(&state)["deactivations"], 0, "{state}");
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_host_files() {
    let silo = TestSilo::start().await;
    for path in [
        "/etc/passwd",
        "/proc/self/environ",
        "/proc/self/cmdline",
        "Cargo.toml",
        "../Cargo.toml",
        ".",
    ] {
        let (status, body) = silo
            .call("probe/files", "read_file", &format!("{path:?}"))
            .await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (422, "app"),
            "{path}: {body}"
        );
        assert!(!body.contains("root:"), "{path} was read: {body}");
    }
    let marker = format!("granary-escape-{:08x}", rand::random::<u32>());
    let targets = [
        std::env::temp_dir().join(&marker),
        silo.data.path().join(&marker),
        std::env::current_dir().unwrap().join(&marker),
    ];
    for target in &targets {
        let path = target.to_string_lossy().into_owned();
        let (status, body) = silo
            .call("probe/files", "write_file", &format!("{path:?}"))
            .await;
        assert_eq!((status, error_code(&body).as_str()), (422, "app"), "{body}");
        assert!(!target.exists(), "the grain created {path}");
    }
    let (status, body) = silo
        .call("probe/files", "write_file", &format!("{marker:?}"))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(!targets[2].exists());
    assert_eq!(silo.call("probe/files", "get", "").await, (200, "0".into()));
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_environment() {
    let grains = grains_dir(&["probe"]);
    let data = tempfile::tempdir().unwrap();
    let secret = ("GRANARY_TEST_SECRET", "hunter2");
    let silo = ChildSilo::spawn(grains.path(), &data.path().join("data"), &[secret]);
    let http = reqwest::Client::new();
    let (status, body) = post(&http, &silo.base, "probe/env", "env", "").await;
    assert_eq!(status, 200, "{body}");
    // The silo process has PATH, RUST_LOG, GRANARY_CACHE_DIR and the secret; the grain
    // sees none of them.
    assert_eq!(body, "[]", "the grain sees the host's environment");
    assert!(!body.contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network() {
    let silo = TestSilo::start().await;
    let own = silo.base.trim_start_matches("http://").to_owned();
    // The silo's own listener is reachable from the host: the grain must not reach it.
    assert!(std::net::TcpStream::connect(&own).is_ok());
    for addr in [own.as_str(), "127.0.0.1:22", "localhost:80", "1.1.1.1:53"] {
        let started = Instant::now();
        let (status, body) = silo
            .call("probe/net", "connect", &format!("{addr:?}"))
            .await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (422, "app"),
            "{addr}: {body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{addr}: refusing took {:?}",
            started.elapsed()
        );
    }
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_grains_state_is_untouchable() {
    let silo = TestSilo::start().await;
    assert_eq!(silo.call("probe/a", "set", "1").await, (200, "1".into()));
    assert_eq!(silo.call("probe/b", "set", "2").await, (200, "2".into()));
    // Keys that look like paths are opaque: `a/../b` is its own grain, not `b`.
    for (i, key) in [
        "a%2F..%2Fb",
        "..%2Fb",
        "b%2F",
        "%2Fb",
        "b%20",
        "a%2Fb",
        "probe%2Fb",
    ]
    .iter()
    .enumerate()
    {
        let value = 100 + i as u64;
        assert_eq!(
            silo.call(&format!("probe/{key}"), "set", &value.to_string())
                .await,
            (200, value.to_string()),
            "{key}"
        );
        assert_eq!(
            silo.call(&format!("probe/{key}"), "get", "").await,
            (200, value.to_string())
        );
    }
    assert_eq!(silo.call("probe/a", "get", "").await, (200, "1".into()));
    assert_eq!(silo.call("probe/b", "get", "").await, (200, "2".into()));
    let stored = |key: &str| {
        let bytes = silo
            .silo
            .storage
            .load_state(&GrainId::parse("probe", key).unwrap())
            .unwrap()
            .unwrap();
        json(std::str::from_utf8(&bytes).unwrap())["value"].clone()
    };
    assert_eq!(stored("b"), 2);
    assert_eq!(stored("a/../b"), 100);

    // Reminders: registering, listing and cancelling act on the caller's own only.
    let args = r#"{"name":"tick","due_ms":60000,"period_ms":60000}"#;
    assert_eq!(silo.call("probe/a", "start_reminder", args).await.0, 200);
    assert_eq!(
        silo.call("probe/b", "reminders", "").await,
        (200, "[]".into())
    );
    assert_eq!(
        silo.call("probe/b", "stop_reminder", "\"tick\"").await.0,
        200
    );
    assert_eq!(
        silo.call("probe/a%2F..%2Fb", "stop_reminder", "\"tick\"")
            .await
            .0,
        200
    );
    assert_eq!(
        silo.call("probe/a", "reminders", "").await,
        (200, r#"["tick"]"#.into())
    );
    let a = GrainId::parse("probe", "a").unwrap();
    assert_eq!(silo.silo.storage.reminders_of(&a).unwrap().len(), 1);
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_flood() {
    let grains = grains_dir(&["probe"]);
    let data = tempfile::tempdir().unwrap();
    let silo = ChildSilo::spawn(grains.path(), &data.path().join("data"), &[]);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let (status, body) = post(&http, &silo.base, "probe/flood", "log_flood", "5000").await;
    let elapsed = started.elapsed();
    assert_eq!((status, body.as_str()), (200, "5000"));
    assert!(
        elapsed < Duration::from_secs(5),
        "10,000 log lines took {elapsed:?}"
    );
    // Once lines flow again, the drops are summarised.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        post(&http, &silo.base, "probe/flood", "log_flood", "1").await,
        (200, "1".into())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = silo.log_text();
    let flood_lines = log.lines().filter(|l| l.contains("flood ")).count();
    // Burst 200, then 100 per second.
    let budget = 200 + (elapsed.as_secs_f64() * 100.0) as usize + 2 + 40;
    eprintln!("log flood: 10002 lines written in {elapsed:?}, {flood_lines} logged");
    assert!(
        flood_lines <= budget,
        "{flood_lines} of 10002 flood lines reached the log (budget {budget})"
    );
    assert!(flood_lines >= 150, "only {flood_lines} lines logged");
    assert!(
        log.contains("guest log lines dropped (rate limit)"),
        "no drop summary in the log"
    );
    // Terminal escapes arrive as text, never as the raw ESC byte.
    assert!(log.contains("\\u{1b}[31mred"), "no escaped sequence logged");
    assert!(
        !log.contains("\u{1b}[31mred"),
        "a raw escape sequence reached the host log"
    );
    let metrics = reqwest::get(format!("{}/metrics", silo.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped: f64 = metrics
        .lines()
        .find(|l| l.starts_with("granary_guest_log_lines_dropped_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no dropped-lines metric:\n{metrics}"));
    assert!(dropped >= 9000.0, "dropped {dropped}");
    assert_eq!(
        post(&http, &silo.base, "probe/flood", "get", "").await,
        (200, "0".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_state_write() {
    let silo = TestSilo::start().await; // max_state_bytes: 1 MiB
    assert_eq!(silo.call("probe/fat", "set", "5").await, (200, "5".into()));
    let grain = GrainId::parse("probe", "fat").unwrap();
    let before = silo.silo.storage.load_state(&grain).unwrap();
    let (status, body) = silo.call("probe/fat", "write_state_mib", "2").await;
    assert_eq!((status, error_code(&body).as_str()), (422, "app"), "{body}");
    assert!(body.contains("exceeds the limit"), "{body}");
    // Nothing committed, and the instance that holds the ballast was discarded (its
    // in-memory value was incremented).
    assert_eq!(silo.silo.storage.load_state(&grain).unwrap(), before);
    assert_eq!(silo.call("probe/fat", "get", "").await, (200, "5".into()));
    let (_, state) = silo.call("probe/fat", "state", "").await;
    assert!(!state.contains("ballast"), "{state}");
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_send_and_call_payloads() {
    let silo = TestSilo::start_with(|c| c.max_payload_bytes = 64 << 10).await;
    assert_eq!(silo.call("probe/big", "set", "4").await, (200, "4".into()));
    // Within the cap both work.
    assert_eq!(
        silo.call("probe/big", "call_big", "1").await,
        (200, "1024".into())
    );
    assert_eq!(silo.call("probe/big", "send_big", "1").await.0, 200);

    for method in ["call_big", "send_big"] {
        let (status, body) = silo.call("probe/big", method, "128").await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (422, "app"),
            "{method}: {body}"
        );
        assert!(
            body.contains("too large") && body.contains(&(64u32 << 10).to_string()),
            "{method}: {body}"
        );
    }
    // Nothing was left in the outbox by the refused send.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        silo.silo
            .storage
            .pending_sends(None, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(silo.call("probe/big", "get", "").await, (200, "4".into()));
    silo.shutdown().await;
}

/// Method names a grain passes to `call` and `send` are bytes it passes to the host too.
/// Uncapped (only payloads were, at first), one `send` with a 30 MiB method name wrote
/// 30 MiB to the outbox and a 61 MB line (the name twice) to the silo log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_names_in_calls_and_sends_are_capped() {
    let grains = grains_dir(&["probe"]);
    let data = tempfile::tempdir().unwrap();
    let silo = ChildSilo::spawn(grains.path(), &data.path().join("data"), &[]);
    let http = reqwest::Client::new();
    for method in ["send_long_method", "call_long_method"] {
        let (status, body) = post(&http, &silo.base, "probe/long", method, "1024").await;
        assert_ne!(status, 200, "{method}: a 1 MiB method name was accepted");
        assert!(body.len() < 4096, "{method}: {} byte error", body.len());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let longest = silo.log_text().lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest < 16 << 10,
        "a {longest} byte line reached the silo log"
    );
}

/// `max_payload_bytes` caps requests, call/send payloads *and replies*: otherwise a reply
/// is bounded only by the grain's memory limit (64 MiB by default), buffered whole per
/// call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_capped() {
    let silo = TestSilo::start_with(|c| c.max_payload_bytes = 64 << 10).await;
    assert_eq!(silo.call("probe/big", "big_reply", "1").await.0, 200);
    assert_eq!(silo.call("probe/big", "set", "2").await.0, 200);
    let (status, body) = silo.call("probe/big", "big_reply", "128").await;
    assert!(
        body.len() < 4096,
        "a {} byte reply passed the {} byte cap",
        body.len(),
        64 << 10
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (413, "too-large"),
        "{body}"
    );
    // Nothing else changed: the grain answers from its committed state.
    assert_eq!(silo.call("probe/big", "get", "").await, (200, "2".into()));
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminder_quota_is_a_clear_guest_error() {
    let silo = TestSilo::start_with(|c| c.max_reminders_per_grain = 3).await;
    let args = |name: &str| format!(r#"{{"name":"{name}","due_ms":60000,"period_ms":60000}}"#);
    for name in ["a", "b", "c"] {
        assert_eq!(
            silo.call("probe/q", "start_reminder", &args(name)).await.0,
            200
        );
    }
    let (status, body) = silo.call("probe/q", "start_reminder", &args("d")).await;
    assert_eq!((status, error_code(&body).as_str()), (422, "app"), "{body}");
    assert!(body.contains("at most 3 reminders per grain"), "{body}");
    // Replacing one is not a new one; the quota is per grain.
    assert_eq!(
        silo.call("probe/q", "start_reminder", &args("a")).await.0,
        200
    );
    assert_eq!(
        silo.call("probe/other", "start_reminder", &args("d"))
            .await
            .0,
        200
    );
    assert_eq!(
        silo.call("probe/q", "reminders", "").await,
        (200, r#"["a","b","c"]"#.into())
    );
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_full() {
    let silo = TestSilo::start_with(|c| c.mailbox_capacity = 2).await;
    assert_eq!(silo.call("probe/busy", "set", "1").await, (200, "1".into()));
    let (http, base) = (silo.client.clone(), silo.base.clone());
    let holder =
        tokio::spawn(async move { post(&http, &base, "probe/busy", "sleep_ms", "1000").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let (http, url) = (
                silo.client.clone(),
                format!("{}/v1/grains/probe/busy/get", silo.base),
            );
            tokio::spawn(async move {
                let r = http.post(url).send().await.unwrap();
                let status = r.status().as_u16();
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                (status, retry, r.text().await.unwrap())
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for caller in callers {
        let (status, retry, body) = caller.await.unwrap();
        match status {
            200 => {
                assert_eq!(body, "1");
                ok += 1;
            }
            503 => {
                assert_eq!(error_code(&body), "overloaded", "{body}");
                assert!(retry.is_some(), "503 without Retry-After");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(holder.await.unwrap().0, 200);
    eprintln!("mailbox full: {ok} served, {refused} refused");
    assert!(refused >= 1, "no caller was refused");
    assert!(ok >= 1, "the queued callers were not served");
    assert_eq!(silo.call("probe/busy", "get", "").await, (200, "1".into()));
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_grain_does_not_stall_others() {
    let silo = TestSilo::start_with(|c| c.turn_timeout_ms = 4000).await;
    let (http, base) = (silo.client.clone(), silo.base.clone());
    let spinner =
        tokio::spawn(async move { post(&http, &base, "probe/spinner", "spin", "").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let (http, base) = (silo.client.clone(), silo.base.clone());
            tokio::spawn(async move {
                post(
                    &http,
                    &base,
                    &format!("counter/other{}", i % 10),
                    "increment",
                    "1",
                )
                .await
            })
        })
        .collect();
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..10 {
        assert_eq!(silo.get("/healthz").await.0, 200);
        assert_eq!(silo.get("/metrics").await.0, 200);
        assert_eq!(
            silo.call(&format!("counter/other{i}"), "get", "").await,
            (200, "5".into())
        );
    }
    eprintln!(
        "busy grain: 50 calls, 20 probes and 10 reads served in {:?} while one grain spun",
        started.elapsed()
    );
    // All of it was served during the spin (it runs until its 4 s deadline).
    assert!(
        !spinner.is_finished(),
        "the spinning turn ended before the others were served"
    );
    let (status, body) = spinner.await.unwrap();
    assert_eq!(
        (status, error_code(&body).as_str()),
        (504, "deadline"),
        "{body}"
    );
    silo.shutdown().await;
}

/// As many spinning grains as the silo has worker threads. Each is yielded every epoch
/// (5 ms); if the yield were a plain self-wake, tokio would poll the I/O driver only every
/// `event_interval` (61) ticks of 5 ms, and every other request would wait ~300 ms per
/// network event (measured before the host yielded through `tokio::task::yield_now`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_grains_on_every_worker_do_not_starve_the_listener() {
    let grains = grains_dir(&["probe", "counter"]);
    let data = tempfile::tempdir().unwrap();
    let env = [("GRANARY_TURN_TIMEOUT_MS", "4000")];
    let silo = ChildSilo::spawn(grains.path(), &data.path().join("data"), &env);
    let http = reqwest::Client::new();
    assert_eq!(
        post(&http, &silo.base, "counter/warm", "increment", "1")
            .await
            .0,
        200
    );
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinners: Vec<_> = (0..workers)
        .map(|i| {
            let (http, base) = (http.clone(), silo.base.clone());
            tokio::spawn(
                async move { post(&http, &base, &format!("probe/spin{i}"), "spin", "").await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        let (status, _) = post(&http, &silo.base, "counter/warm", "get", "").await;
        assert_eq!(status, 200);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    eprintln!("{workers} spinning grains: call latencies {latencies:?}");
    for spinner in spinners {
        assert_eq!(spinner.await.unwrap().0, 504);
    }
    let median = latencies[latencies.len() / 2];
    assert!(
        median < Duration::from_millis(100),
        "with {workers} busy grains a trivial call takes {median:?} (median)"
    );
}

/// Admin routes without a configured token answer loopback clients only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_answer_only_loopback_without_a_token() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("SKIPPED: this machine has no non-loopback IPv4 address to call from");
        return;
    };
    let silo = TestSilo::start_with(|c| c.listen = "0.0.0.0:0".parse().unwrap()).await;
    let port = silo.base.rsplit(':').next().unwrap().to_owned();
    let remote = format!("http://{ip}:{port}");
    let counter = std::fs::read(granary_tests::component("counter")).unwrap();
    let r = silo
        .client
        .put(format!("{remote}/v1/kinds/counter"))
        .body(counter.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = silo
        .client
        .post(format!("{remote}/v1/admin/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Grain calls are not admin routes.
    assert_eq!(
        post(&silo.client, &remote, "counter/c", "increment", "1").await,
        (200, "1".into())
    );
    let r = silo
        .client
        .put(format!("http://127.0.0.1:{port}/v1/kinds/counter"))
        .body(counter)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(silo.get("/readyz").await.0, 200, "a refused drain drained");
    silo.shutdown().await;
}

/// This machine's address on its default route, if it has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.255.255.255:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// A grain-world component that passes bad pointers to the host (see the file's header).
const HOSTILE_WAT: &str = include_str!("hostile.wat");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pointers_in_canonical_abi_calls() {
    // Few activations: the pooling allocator, whose memories end in inaccessible pages.
    bad_pointers_under(&[("GRANARY_MAX_ACTIVATIONS", "1000")], "pooled").await;
}

/// The same attacks on a silo whose memories are slices of one read-write region (what
/// a silo plans when `vm.max_map_count` limits its activations): nothing there faults, so
/// every bound must be checked, by the host and by the compiled guest code alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pointers_in_canonical_abi_calls_with_arena_memories() {
    let map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count").unwrap();
    let env = [
        // More activations than pooled instances could map: the silo takes the arena.
        ("GRANARY_MAX_ACTIVATIONS", map_count.trim()),
        ("GRANARY_MEMORY_LIMIT_BYTES", "16777216"),
    ];
    bad_pointers_under(&env, "arena memories").await;
}

/// Runs every attack of the WAT fixture in a `granary serve` started with `env`, whose
/// log must name `allocation` in its capacity line.
async fn bad_pointers_under(env: &[(&str, &str)], allocation: &str) {
    let grains = grains_dir(&["counter"]);
    let wasm = wat::parse_str(HOSTILE_WAT).expect("the WAT fixture parses");
    std::fs::write(grains.path().join("hostile.wasm"), wasm).unwrap();
    let data = tempfile::tempdir().unwrap();
    let silo = ChildSilo::spawn(grains.path(), &data.path().join("data"), env);
    let http = reqwest::Client::new();
    let call = |target: &'static str, method: &'static str| {
        let (http, base) = (http.clone(), silo.base.clone());
        async move { post(&http, &base, target, method, "").await }
    };
    assert_eq!(
        call("counter/neighbour", "increment").await,
        (200, "1".into())
    );
    // The control cases: the fixture loads, and works when it behaves.
    assert_eq!(call("hostile/h", "fine").await, (200, "".into()));
    assert_eq!(call("hostile/h", "valid_log").await, (200, "".into()));
    assert_eq!(call("hostile/h", "edge").await, (200, "".into()));
    // Growing past the memory limit is the memory error, whichever allocation holds it.
    let (status, body) = call("hostile/h", "grow_huge").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (500, "memory"),
        "{body}"
    );
    let cases = [
        ("past_end", "out of bounds memory access"),
        ("oob_log", "string pointer/length out of bounds of memory"),
        ("wrap_log", "string pointer/length out of bounds of memory"),
        ("utf8_log", "invalid utf-8"),
        ("state_oob", "list pointer/length out of bounds of memory"),
        ("huge_state", "list pointer/length out of bounds of memory"),
        ("retptr_state", "pointer out of bounds"),
    ];
    for (method, _) in cases {
        let (status, body) = call("hostile/h", method).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (500, "trapped"),
            "{method}: {body}"
        );
        // The trapped instance was discarded: a fresh one answers.
        assert_eq!(call("hostile/h", "fine").await, (200, "".into()));
    }
    assert_eq!(call("counter/neighbour", "get").await, (200, "1".into()));
    let log = silo.log_text();
    let capacity = log
        .lines()
        .find(|l| l.contains("activation capacity"))
        .unwrap_or_else(|| panic!("no capacity line in the log:\n{log}"));
    assert!(capacity.contains(allocation), "{capacity}");
    assert!(
        !log.contains('\u{1b}'),
        "a log written to a file carries escape sequences"
    );
    assert!(
        log.contains("hello from WAT"),
        "the valid line was not logged"
    );
    for (method, cause) in cases {
        let entry = log
            .split("grain trapped")
            .find(|e| e.contains(&format!("export=\"{method}\"")))
            .unwrap_or_else(|| panic!("no trap logged for {method}:\n{log}"));
        let entry = entry.split("Caused by:").nth(1).unwrap_or(entry);
        assert!(
            entry.lines().take(3).any(|l| l.contains(cause)),
            "{method}: the log does not name the cause {cause:?}:\n{entry}"
        );
    }
    // A trapped turn commits nothing: the grain has no state.
    drop(silo);
    let storage = granary_tests::open_store(&data.path().join("data/db")).unwrap();
    use granary::storage::Storage;
    assert!(
        storage
            .load_state(&GrainId::parse("hostile", "h").unwrap())
            .unwrap()
            .is_none(),
        "a trapped turn committed state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_importing_unknown_interfaces_are_refused() {
    let silo = TestSilo::start().await;
    let imports = [
        r#"(import "evil:host/fs@1.0.0" (instance (export "read" (func (param "path" string) (result string)))))"#,
        r#"(import "wasi:http/outgoing-handler@0.2.0" (instance (export "handle" (func (param "request" string)))))"#,
        r#"(import "granary:grain/admin@0.1.0" (instance (export "drain" (func))))"#,
    ];
    // And a function the grain world's `context` interface does not have.
    let extra = HOSTILE_WAT.replacen(
        r#"(export (;0;) "log" (func (type 2)))"#,
        r#"(export (;0;) "log" (func (type 2)))
    (export "read-file" (func (param "path" string) (result string)))"#,
        1,
    );
    assert_ne!(extra, HOSTILE_WAT);
    let mut fixtures: Vec<(String, String)> = imports
        .iter()
        .map(|import| {
            let wat = HOSTILE_WAT.replacen("(component", &format!("(component\n  {import}"), 1);
            (import.to_string(), wat)
        })
        .collect();
    fixtures.push(("granary:grain/context@0.1.0#read-file".into(), extra));
    for (import, wat) in fixtures {
        let wasm = wat::parse_str(&wat).unwrap_or_else(|e| panic!("{import}: {e}"));
        let r = silo
            .client
            .put(format!("{}/v1/kinds/sneaky", silo.base))
            .body(wasm)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 400, "{import}: {body}");
        assert!(
            body.contains("imports something the grain world does not provide"),
            "{import}: {body}"
        );
    }
    let (_, kinds) = silo.get("/v1/kinds").await;
    assert!(!kinds.contains("sneaky"), "{kinds}");
    assert!(!silo.grains.path().join("sneaky.wasm").exists());
    assert_eq!(silo.call("sneaky/x", "fine", "").await.0, 404);
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_under_a_bad_kind_name_is_refused() {
    let silo = TestSilo::start().await;
    let counter = std::fs::read(granary_tests::component("counter")).unwrap();
    let long = "k".repeat(1024);
    for name in [
        "..%2Fescape",
        "a%2Fb",
        "%2Fetc%2Fpasswd",
        "a%00b",
        "Counter",
        "a.wasm",
        long.as_str(),
        "a%1B%5B31m",
    ] {
        let r = silo
            .client
            .put(format!("{}/v1/kinds/{name}", silo.base))
            .body(counter.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 400, "{name}: {body}");
    }
    let mut files: Vec<String> = std::fs::read_dir(silo.grains.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["counter.wasm", "ledger.wasm", "probe.wasm"]);
    let parent = silo.grains.path().parent().unwrap();
    assert!(!parent.join("escape.wasm").exists());
    assert!(!parent.join("escape").exists());
    silo.shutdown().await;
}

/// A refused deploy must not echo the kind name from the URL as is: a 1 KiB name was
/// echoed whole, and `%1B` / `%0A` put a raw terminal escape and a forged line into the
/// silo log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_deploys_do_not_echo_raw_names() {
    let grains = grains_dir(&["counter"]);
    let data = tempfile::tempdir().unwrap();
    let silo = ChildSilo::spawn(grains.path(), &data.path().join("data"), &[]);
    let http = reqwest::Client::new();
    let counter = std::fs::read(granary_tests::component("counter")).unwrap();
    let long = "k".repeat(1024);
    for name in [long.as_str(), "a%1B%5B31mRED%0Aforged%20line"] {
        let r = http
            .put(format!("{}/v1/kinds/{name}", silo.base))
            .body(counter.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body = r.text().await.unwrap();
        assert!(body.len() < 400, "the answer echoes the name: {body}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = silo.log_text();
    assert!(!log.contains(&long), "the 1 KiB name reached the log");
    assert!(
        !log.contains("\u{1b}[31mRED"),
        "a raw escape sequence reached the log"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("forged line")),
        "a forged line reached the log"
    );
}
