//! Hot deploy: `PUT /v1/kinds/{kind}` installs a new version while serving. A bad file
//! changes nothing; live activations of the old version deactivate and come back on the
//! new one with their state; no call fails during the switch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use granary_tests::TestSilo;

/// The same component with a custom section appended: another version (another hash).
fn with_custom_section(wasm: &[u8], name: &str) -> Vec<u8> {
    let mut payload = leb128(name.len() as u64);
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(b"v2");
    let mut out = wasm.to_vec();
    out.push(0);
    out.extend(leb128(payload.len() as u64));
    out.extend(payload);
    out
}

fn leb128(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

async fn version_of(silo: &TestSilo, kind: &str) -> String {
    let (_, body) = silo.get("/v1/kinds").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == kind)
        .map(|k| k["version"].as_str().unwrap().to_owned())
        .unwrap()
}

async fn deploy(silo: &TestSilo, kind: &str, wasm: Vec<u8>) -> (u16, serde_json::Value) {
    let r = silo
        .client
        .put(format!("{}/v1/kinds/{kind}", silo.base))
        .body(wasm)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_under_load_fails_no_call_and_keeps_state() {
    let silo = TestSilo::start().await;
    let before = version_of(&silo, "counter").await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    let failures = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for c in 0..4 {
        let (http, base) = (silo.client.clone(), silo.base.clone());
        let (stop, acked, failures) = (stop.clone(), acked.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, body) =
                    granary_tests::post(&http, &base, &format!("counter/u{c}"), "increment", "1")
                        .await;
                if status == 200 {
                    acked[c].store(body.parse().unwrap(), Ordering::SeqCst);
                } else {
                    failures.fetch_add(1, Ordering::SeqCst);
                    eprintln!("call failed during deploy: {status} {body}");
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = with_custom_section(
        &std::fs::read(granary_tests::component("counter")).unwrap(),
        "v2",
    );
    let (status, deployed) = deploy(&silo, "counter", v2).await;
    assert_eq!(status, 200, "{deployed}");
    assert!(deployed["upgraded"].as_u64().unwrap() >= 1, "{deployed}");
    assert_eq!(deployed["persisted"], true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    let after = version_of(&silo, "counter").await;
    assert_ne!(before, after);
    assert_eq!(after, deployed["version"]);
    for c in 0..4 {
        let (_, value) = silo.call(&format!("counter/u{c}"), "get", "").await;
        assert_eq!(
            value.parse::<u64>().unwrap(),
            acked[c].load(Ordering::SeqCst)
        );
    }
    // Every live activation now runs the new version.
    let (_, grains) = silo.get("/v1/grains").await;
    let grains: serde_json::Value = serde_json::from_str(&grains).unwrap();
    for a in grains["activations"].as_array().unwrap() {
        if a["kind"] == "counter" && a["deactivating"] == false {
            assert_eq!(a["version"], after, "{a}");
        }
    }
    // And the new version was written where a restart will find it.
    let on_disk = std::fs::read(silo.grains.path().join("counter.wasm")).unwrap();
    assert!(on_disk.ends_with(b"v2"));
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_component_changes_nothing() {
    let silo = TestSilo::start().await;
    assert_eq!(silo.call("counter/b", "increment", "2").await.0, 200);
    let before = version_of(&silo, "counter").await;
    for (bad, reason) in [
        (b"not wasm at all".to_vec(), "not a WebAssembly file"),
        (b"\0asm\x01\0\0\0".to_vec(), "wasm32-wasip2"),
        (
            wat::parse_str(r#"(component (import "granary:grain/state@0.2.0" (instance)))"#)
                .unwrap(),
            "granary:grain@0.2.0",
        ),
        (wat::parse_str("(component)").unwrap(), "does not export"),
    ] {
        let (status, body) = deploy(&silo, "counter", bad).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["message"].as_str().unwrap().contains(reason), "{body}");
    }
    let (status, _) = deploy(&silo, "Bad_Name", b"x".to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(version_of(&silo, "counter").await, before);
    assert_eq!(
        silo.call("counter/b", "increment", "2").await,
        (200, "4".into())
    );
    silo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_token_when_one_is_configured() {
    let silo = TestSilo::start_with(|c| c.admin_token = Some("s3cret".into())).await;
    let counter = std::fs::read(granary_tests::component("counter")).unwrap();
    let (status, body) = deploy(&silo, "counter", counter.clone()).await;
    assert_eq!(status, 401, "{body}");
    let r = silo
        .client
        .put(format!("{}/v1/kinds/counter", silo.base))
        .bearer_auth("wrong")
        .body(counter.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = silo
        .client
        .put(format!("{}/v1/kinds/counter", silo.base))
        .bearer_auth("s3cret")
        .body(counter)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = silo
        .client
        .post(format!("{}/v1/admin/drain", silo.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    silo.shutdown().await;
}
