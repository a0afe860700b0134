//! The `granary` CLI against a real `granary serve` process, including a restart.

use std::process::Command;

use granary_tests::{ChildSilo, grains_dir, granary_bin};

fn granary_call(base: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(granary_bin())
        .arg("call")
        .args(args)
        .args(["--addr", base])
        .output()
        .expect("running granary call");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

#[test]
fn call_prints_replies_and_state_survives_a_restart() {
    let grains = grains_dir(&["counter"]);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let mut silo = ChildSilo::spawn(grains.path(), &data_dir, &[]);
    let increment = ["counter/alice", "increment", "5"];
    assert_eq!(granary_call(&silo.base, &increment).1, "5");
    assert_eq!(granary_call(&silo.base, &increment).1, "10");

    silo.signal("TERM");
    let status = silo.wait_exit(std::time::Duration::from_secs(20));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        silo.log_text()
    );

    let silo = ChildSilo::spawn(grains.path(), &data_dir, &[]);
    assert_eq!(granary_call(&silo.base, &["counter/alice", "get"]).1, "10");

    let (ok, _, stderr) = granary_call(&silo.base, &["counter/alice", "nope"]);
    assert!(!ok);
    assert!(
        stderr.contains("404") && stderr.contains("unknown-method"),
        "{stderr}"
    );
    let (ok, _, stderr) = granary_call(&silo.base, &["counter", "get"]);
    assert!(!ok);
    assert!(stderr.contains("KIND/KEY"), "{stderr}");
    let (ok, _, stderr) = granary_call(&silo.base, &["counter/alice", "increment", "{oops"]);
    assert!(!ok);
    assert!(stderr.contains("not valid JSON"), "{stderr}");
}

#[test]
fn serve_refuses_a_data_directory_it_cannot_create() {
    let grains = grains_dir(&["counter"]);
    let output = Command::new(granary_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            "/nonexistent/parent/data",
            "--grains",
        ])
        .arg(grains.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/parent") && stderr.contains("does not exist"),
        "{stderr}"
    );
}
