//! The grain author's path: `granary new` scaffolds a crate that builds for wasm32-wasip2
//! and serves as is, `granary dev` serves it and redeploys it on every change, and the
//! docs cover every configuration key and every HTTP route.
//!
//! The scaffolded crates build with `cargo --offline` (everything is in the registry cache)
//! into `target/scaffold-test`, so repeated runs are incremental.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use granary_tests::{ChildSilo, granary_bin, shared_cache_dir, workspace_root};
use tempfile::TempDir;

/// A temp dir inside the repository (`target/tmp`), so `granary new` finds the checkout's
/// `guest-sdk` by itself.
fn temp_in_repo() -> TempDir {
    let base = workspace_root().join("target/tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix("author-")
        .tempdir_in(base)
        .unwrap()
}

fn scaffold_target_dir() -> PathBuf {
    workspace_root().join("target/scaffold-test")
}

fn granary(args: &[&str]) -> Output {
    Command::new(granary_bin())
        .args(args)
        .output()
        .expect("running granary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

fn granary_new(name: &str, dir: &Path, extra: &[&str]) -> Output {
    let dir = dir.to_str().unwrap();
    let mut args = vec!["new", name, "--path", dir];
    args.extend_from_slice(extra);
    granary(&args)
}

fn cargo(dir: &Path, args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(args)
        .arg("--offline")
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", scaffold_target_dir())
        .output()
        .expect("running cargo");
    assert!(
        output.status.success(),
        "cargo {args:?} in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `granary call` against `base`: (success, stdout, stderr).
fn call(base: &str, target: &str, method: &str, json: Option<&str>) -> (bool, String, String) {
    let mut args = vec!["call", target, method];
    args.extend(json);
    args.extend(["--addr", base]);
    let output = granary(&args);
    (
        output.status.success(),
        text(&output.stdout),
        text(&output.stderr),
    )
}

#[test]
fn new_refuses_bad_names_and_non_empty_directories() {
    let tmp = tempfile::tempdir().unwrap();

    let dir = tmp.path().join("bad");
    let output = granary_new("Bad_Name", &dir, &[]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("Bad_Name") && stderr.contains("[a-z][a-z0-9-]{0,62}"),
        "{stderr}"
    );
    assert!(!dir.exists(), "nothing is created for a bad name");

    let output = granary_new("fn", &dir, &[]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("keyword"));

    let taken = tmp.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("keep.txt"), "mine").unwrap();
    let output = granary_new("notes", &taken, &[]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("already exists and is not empty") && stderr.contains("taken"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(taken.join("keep.txt")).unwrap(),
        "mine"
    );
    assert!(!taken.join("Cargo.toml").exists());

    // An empty directory is fine, and so is the default `./NAME`.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(granary_new("notes", &empty, &[]).status.success());
    let output = Command::new(granary_bin())
        .args(["new", "plain"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    for file in ["Cargo.toml", "src/lib.rs", "README.md", ".gitignore"] {
        assert!(tmp.path().join("plain").join(file).is_file(), "{file}");
    }
}

#[test]
fn new_picks_the_sdk_dependency() {
    // Outside a checkout: the registry version, and a README that says what to do until
    // it is published.
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().join("elsewhere");
    let output = granary_new("elsewhere", &dir, &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("granary-sdk = \"0.1\""), "{manifest}");
    assert!(manifest.contains("[workspace]"), "{manifest}");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.contains("published"), "{readme}");
    assert!(text(&output.stdout).contains("published"));

    // `--sdk-path`: a path dependency wherever the crate is (the checkout root works too).
    let dir = outside.path().join("pinned");
    let root = workspace_root();
    let output = granary_new("pinned", &dir, &["--sdk-path", root.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let sdk = root.join("guest-sdk").canonicalize().unwrap();
    assert!(
        manifest.contains(&format!("granary-sdk = {{ path = \"{}\" }}", sdk.display())),
        "{manifest}"
    );

    let output = granary_new("nosdk", &outside.path().join("nosdk"), &["--sdk-path", "/"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("no granary-sdk crate"));
}

#[test]
fn scaffolded_grain_builds_serves_and_answers() {
    let tmp = temp_in_repo();
    let dir = tmp.path().join("author-notes");
    let output = granary_new("author-notes", &dir, &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));

    // Inside the checkout: a relative path dependency on its guest-sdk.
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let path = manifest
        .lines()
        .find_map(|l| l.strip_prefix("granary-sdk = { path = \""))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no path dependency on granary-sdk:\n{manifest}"));
    assert!(path.starts_with(".."), "{path}");
    assert_eq!(
        dir.join(path).canonicalize().unwrap(),
        workspace_root().join("guest-sdk").canonicalize().unwrap()
    );

    // The next steps name the build command and the rename to `<kind>.wasm`.
    let steps = text(&output.stdout);
    for expected in [
        "cargo build --release --target wasm32-wasip2",
        "target/wasm32-wasip2/release/author_notes.wasm grains/author-notes.wasm",
        "granary serve --grains grains",
        "granary call author-notes/alice",
        "granary dev",
    ] {
        assert!(
            steps.contains(expected),
            "{expected:?} missing from:\n{steps}"
        );
    }
    let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
    assert!(lib.contains("//! cargo build --release --target wasm32-wasip2"));

    cargo(&dir, &["build", "--release", "--target", "wasm32-wasip2"]);
    cargo(&dir, &["test"]);

    let built = scaffold_target_dir().join("wasm32-wasip2/release/author_notes.wasm");
    let grains = tempfile::tempdir().unwrap();
    std::fs::copy(&built, grains.path().join("author-notes.wasm")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let silo = ChildSilo::spawn(grains.path(), &data.path().join("data"), &[]);
    let base = silo.base.as_str();
    let grain = "author-notes/alice";

    assert_eq!(call(base, grain, "add", Some("\"buy milk\"")).1, "1");
    assert_eq!(call(base, grain, "add", Some("\"call Bob\"")).1, "2");
    let (ok, list, _) = call(base, grain, "list", None);
    assert!(ok);
    let list: Vec<String> = serde_json::from_str(&list).unwrap();
    assert_eq!(list, ["buy milk", "call Bob"]);
    assert_eq!(call(base, grain, "remove", Some("0")).1, "\"buy milk\"");
    let (ok, _, stderr) = call(base, grain, "remove", Some("7"));
    assert!(!ok);
    assert!(
        stderr.contains("422") && stderr.contains("no note at index 7 (1 stored)"),
        "{stderr}"
    );
    let (ok, _, stderr) = call(base, grain, "add", Some("\"  \""));
    assert!(!ok && stderr.contains("must not be empty"), "{stderr}");
    assert_eq!(
        call(base, grain, "summary", None).1,
        "\"author-notes/alice holds 1 note(s)\""
    );
    assert_eq!(
        call(base, "author-notes/bob", "list", None).1,
        "[]",
        "keys are independent"
    );
}

/// A `granary dev` child process; killed on drop.
struct DevProcess {
    child: Child,
    base: String,
    stdout: Arc<Mutex<Vec<String>>>,
    log: PathBuf,
}

impl DevProcess {
    fn spawn(crate_dir: &Path, log: PathBuf) -> Self {
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(granary_bin())
            .arg("dev")
            .arg(crate_dir)
            .args(["--listen", "127.0.0.1:0"])
            .env("CARGO_TARGET_DIR", scaffold_target_dir())
            .env("CARGO_NET_OFFLINE", "true")
            .env("GRANARY_CACHE_DIR", shared_cache_dir())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawning granary dev");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    stdout.lock().unwrap().push(line.clone());
                    if let Some(url) = line.strip_prefix("granary: listening on ") {
                        break url.trim().to_owned();
                    }
                }
                _ => panic!(
                    "granary dev exited before listening; stdout:\n{}\nlog:\n{}",
                    stdout.lock().unwrap().join("\n"),
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        };
        let collected = stdout.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            base,
            stdout,
            log,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    fn explain(&self) -> String {
        format!(
            "stdout:\n{}\nlog:\n{}",
            self.stdout(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Waits until `check` holds, polling every 200 ms.
    fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out waiting for {what}\n{}", self.explain());
    }
}

impl Drop for DevProcess {
    /// SIGTERM first, so `granary dev` removes its temporary directories; SIGKILL if it
    /// has not exited within 10 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn dev_serves_and_redeploys_on_change() {
    let tmp = temp_in_repo();
    let dir = tmp.path().join("dev-notes");
    let output = granary_new("dev-notes", &dir, &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let dev = DevProcess::spawn(&dir, tmp.path().join("dev.log"));
    let base = dev.base.clone();
    let grain = "dev-notes/alice";

    // Ready to paste: the call lines name the methods and the address.
    let stdout = dev.stdout();
    assert!(
        stdout.contains(&format!("granary call dev-notes/alice list --addr {base}")),
        "{stdout}"
    );

    assert_eq!(call(&base, grain, "add", Some("\"buy milk\"")).1, "1");
    assert_eq!(
        call(&base, grain, "summary", None).1,
        "\"dev-notes/alice holds 1 note(s)\""
    );

    // Change a method's reply: the live activation is upgraded, its state kept.
    let lib = dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    assert_eq!(source.matches("holds {} note(s)").count(), 1);
    std::fs::write(
        &lib,
        source.replace("holds {} note(s)", "now holds {} note(s)"),
    )
    .unwrap();
    dev.wait_for("the new reply", Duration::from_secs(120), || {
        call(&base, grain, "summary", None).1 == "\"dev-notes/alice now holds 1 note(s)\""
    });
    assert!(
        dev.stdout().contains("deployed version"),
        "{}",
        dev.explain()
    );

    // A build failure keeps the last good version serving.
    let fixed = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, format!("{fixed}\nfn broken( {{\n")).unwrap();
    dev.wait_for("the failed build", Duration::from_secs(120), || {
        dev.stdout().contains("build failed")
    });
    assert!(dev.stdout().contains("still serving version"));
    assert_eq!(
        call(&base, grain, "summary", None).1,
        "\"dev-notes/alice now holds 1 note(s)\""
    );

    // SIGTERM drains and exits 0.
    let mut dev = dev;
    let status = Command::new("kill")
        .args(["-TERM", &dev.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM failed");
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "granary dev did not exit\n{}",
            dev.explain()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exit.code(), Some(0), "{}", dev.explain());
}

#[test]
fn docs_cover_every_config_key_and_route() {
    let root = workspace_root();
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };

    let configuration = read("docs/configuration.md");
    let defaults = serde_json::to_value(granary::Config::default()).unwrap();
    let keys: Vec<&String> = defaults.as_object().unwrap().keys().collect();
    assert!(keys.len() > 10, "{keys:?}");
    for key in keys {
        assert!(
            configuration.contains(&format!("`{key}`")),
            "docs/configuration.md does not mention `{key}`"
        );
        // Every scalar key has an environment override; `[kinds.<kind>]` is file-only.
        if key != "kinds" {
            let env = format!("GRANARY_{}", key.to_ascii_uppercase());
            assert!(
                configuration.contains(&env),
                "docs/configuration.md does not mention {env}"
            );
        }
    }

    let http = read("docs/http-api.md");
    let gateway = read("host/src/gateway.rs");
    let routes: Vec<&str> = gateway
        .split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
        .collect();
    assert!(routes.len() >= 8, "{routes:?}");
    for route in routes {
        assert!(
            http.contains(route),
            "docs/http-api.md does not mention the route {route}"
        );
    }
}
