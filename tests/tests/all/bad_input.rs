//! Every error a client or operator can cause: a clear status and message, nothing lost,
//! and the silo keeps serving.

use granary_tests::{TestSilo, error_code};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_refused_before_storage() {
    let silo = TestSilo::start().await;
    let cases = [
        ("nosuchkind/alice", "get", 404, "unknown-kind"),
        ("Counter/alice", "get", 400, "bad-id"),
        ("..%2Fetc/alice", "get", 400, "bad-id"),
        ("count%00er/alice", "get", 400, "bad-id"),
        ("counter/a%00b", "get", 400, "bad-id"),
        ("counter/a%1Bb", "get", 400, "bad-id"),
        // Not UTF-8 once decoded: the same JSON error, not axum's plain-text one.
        ("counter/a%FFb", "get", 400, "bad-id"),
        ("counter/alice", "g%FFt", 400, "bad-id"),
        ("counter/alice", "no_such_method", 404, "unknown-method"),
        ("counter/alice", "bad%20method", 400, "bad-id"),
    ];
    for (target, method, status, code) in cases {
        let (got, body) = silo.call(target, method, "").await;
        assert_eq!(
            (got, error_code(&body).as_str()),
            (status, code),
            "{target} {method}: {body}"
        );
    }
    let long_kind = "k".repeat(1024);
    let (got, body) = silo.call(&format!("{long_kind}/a"), "get", "").await;
    assert_eq!(got, 400, "{body}");
    assert!(
        body.len() < 400,
        "the error must not echo 1 KiB back: {body}"
    );
    let long_key = "k".repeat(257);
    assert_eq!(
        silo.call(&format!("counter/{long_key}"), "get", "").await.0,
        400
    );
    // Nothing of the above reached storage.
    assert!(
        silo.silo
            .storage
            .load_state(&granary::GrainId::parse("counter", "alice").unwrap())
            .unwrap()
            .is_none()
    );
    assert_eq!(
        silo.call("counter/alice", "increment", "1").await,
        (200, "1".into())
    );
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads() {
    let silo = TestSilo::start_with(|c| c.max_payload_bytes = 1024).await;
    let (status, body) = silo.call("counter/alice", "increment", "{not json").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "bad-payload"),
        "{body}"
    );
    let (status, body) = silo.call("counter/alice", "increment", "\"five\"").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "bad-payload"),
        "{body}"
    );
    let big = format!("\"{}\"", "x".repeat(2000));
    let (status, body) = silo.call("probe/alice", "echo", &big).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (413, "too-large"),
        "{body}"
    );
    let fits = format!("\"{}\"", "x".repeat(1000));
    assert_eq!(silo.call("probe/alice", "echo", &fits).await, (200, fits));
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_turns_commit_nothing() {
    let silo = TestSilo::start().await;
    assert_eq!(silo.call("probe/p", "set", "7").await, (200, "7".into()));

    let (status, body) = silo.call("probe/p", "fail_after_write", "99").await;
    assert_eq!((status, error_code(&body).as_str()), (422, "app"), "{body}");
    assert!(body.contains("failed on purpose"), "{body}");
    assert_eq!(silo.call("probe/p", "get", "").await, (200, "7".into()));

    let (status, body) = silo.call("probe/p", "trap", "").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (500, "trapped"),
        "{body}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["incident"].as_str().unwrap().len(), 8, "{body}");
    assert_eq!(silo.call("probe/p", "get", "").await, (200, "7".into()));
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_loop_hits_the_turn_deadline_and_others_keep_running() {
    let silo = TestSilo::start_with(|c| c.turn_timeout_ms = 300).await;
    let (http, base) = (silo.client.clone(), silo.base.clone());
    let spinning =
        tokio::spawn(
            async move { granary_tests::post(&http, &base, "probe/spin", "spin", "").await },
        );
    // Other grains are served while one spins.
    for i in 0..5 {
        assert_eq!(
            silo.call("counter/busy", "increment", "1").await,
            (200, (i + 1).to_string())
        );
    }
    let (status, body) = spinning.await.unwrap();
    assert_eq!(
        (status, error_code(&body).as_str()),
        (504, "deadline"),
        "{body}"
    );
    // The spinning grain was discarded and reactivates cleanly.
    assert_eq!(silo.call("probe/spin", "get", "").await, (200, "0".into()));
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_components_are_refused_and_the_rest_load() {
    let grains = granary_tests::grains_dir(&["counter"]);
    let dir = grains.path();
    std::fs::write(dir.join("empty.wasm"), b"").unwrap();
    std::fs::write(dir.join("text.wasm"), b"hello, I am not wasm").unwrap();
    let counter = std::fs::read(dir.join("counter.wasm")).unwrap();
    std::fs::write(dir.join("truncated.wasm"), &counter[..counter.len() / 2]).unwrap();
    std::fs::write(dir.join("core.wasm"), wat_core_module()).unwrap();
    std::fs::write(dir.join("Bad_Name.wasm"), &counter).unwrap();
    std::fs::write(dir.join("otherworld.wasm"), other_world_component()).unwrap();

    let data = tempfile::tempdir().unwrap();
    let config = granary::Config {
        grains_dir: dir.to_path_buf(),
        data_dir: data.path().join("data"),
        cache_dir: Some(granary_tests::shared_cache_dir()),
        ..granary::Config::default()
    };
    let silo = tokio::task::spawn_blocking(move || granary::Silo::open(config))
        .await
        .unwrap()
        .unwrap();
    let loaded: Vec<String> = silo.kinds.list().iter().map(|k| k.name.clone()).collect();
    assert_eq!(loaded, ["counter"]);

    let errors = {
        let runtime = &silo.runtime;
        silo.kinds.load_dir(runtime, dir).unwrap()
    };
    let by_file = |f: &str| {
        errors
            .iter()
            .find(|e| e.file == f)
            .unwrap_or_else(|| panic!("{f} not reported: {errors:?}"))
            .reason
            .clone()
    };
    assert!(by_file("empty.wasm").contains("empty"));
    assert!(by_file("text.wasm").contains("not a WebAssembly file"));
    assert!(by_file("truncated.wasm").contains("not a valid component"));
    assert!(by_file("core.wasm").contains("wasm32-wasip2"));
    assert!(by_file("Bad_Name.wasm").contains("not a kind name"));
    assert!(
        by_file("otherworld.wasm").contains("granary:grain"),
        "{}",
        by_file("otherworld.wasm")
    );
}

fn wat_core_module() -> Vec<u8> {
    b"\0asm\x01\0\0\0".to_vec()
}

/// A valid component that exports nothing of the grain world.
fn other_world_component() -> Vec<u8> {
    // (component) encoded: magic, component version/layer.
    b"\0asm\x0d\0\x01\0".to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_data_directory_parent_is_a_clear_error() {
    let grains = granary_tests::grains_dir(&["counter"]);
    let config = granary::Config {
        grains_dir: grains.path().to_path_buf(),
        data_dir: "/nonexistent/granary/data".into(),
        ..granary::Config::default()
    };
    let err = granary::Silo::open(config).err().expect("must fail");
    let text = format!("{err:#}");
    assert!(
        text.contains("/nonexistent/granary/data") && text.contains("does not exist"),
        "{text}"
    );
}
