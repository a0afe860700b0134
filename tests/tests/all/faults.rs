//! Faults from the machine and bad input from clients and operators: a corrupt compile
//! cache, a corrupt, foreign or future-version store, a full disk, and property tests of
//! every parser a client or operator reaches (grain ids, the config loader, the gateway's
//! path, method and payload handling). Plus golden files pinning the on-disk encoding.
//!
//! Each case must give a clear error, a log line naming the cause, lose nothing, and leave
//! the silo serving (or, for a store it cannot trust, refuse to start with the data
//! untouched).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use granary::GrainId;
use granary::reminders::{MissedPolicy, ReminderChange, ReminderRecord, Schedule, TickOutcome};
use granary::storage::{OutboxEntry, StateChange, Storage, TurnCommit};
use granary_tests::{
    ChildSilo, TestSilo, error_code, grains_dir, granary_bin, http_get, post, shared_cache_dir,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------
// Compile cache

/// Every cache entry of `dir`.
fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    entries.sort();
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_compile_cache_entries_are_recompiled() {
    let kinds = ["counter", "ledger", "probe", "sync-worker"];
    let grains = grains_dir(&kinds);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let cache = tempfile::tempdir().unwrap();
    let cache_env = cache.path().to_str().unwrap();
    let env = [("GRANARY_CACHE_DIR", cache_env)];
    let http = reqwest::Client::new();

    let mut silo = ChildSilo::spawn(grains.path(), &data_dir, &env);
    assert_eq!(
        post(&http, &silo.base, "counter/c", "increment", "7").await,
        (200, "7".into())
    );
    silo.signal("TERM");
    assert!(
        silo.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let entries = cache_entries(cache.path());
    assert_eq!(entries.len(), kinds.len(), "{entries:?}");

    // One kind of damage per entry: garbage, truncated, emptied, and a body that is
    // garbage under a valid checksum (what a bug in the writer would leave).
    let mut damaged = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let bytes = std::fs::read(entry).unwrap();
        let broken = match i % 4 {
            0 => vec![0x5a; bytes.len()],
            1 => bytes[..bytes.len() / 2].to_vec(),
            2 => Vec::new(),
            _ => {
                let body = vec![0x7fu8; 4096];
                let mut b = Sha256::digest(&body).to_vec();
                b.extend_from_slice(&body);
                b
            }
        };
        std::fs::write(entry, &broken).unwrap();
        damaged.insert(entry.clone(), broken);
    }

    let silo = ChildSilo::spawn(grains.path(), &data_dir, &env);
    assert_eq!(
        post(&http, &silo.base, "counter/c", "increment", "1").await,
        (200, "8".into()),
        "state lost or kind not loaded after a corrupt cache; log:\n{}",
        silo.log_text()
    );
    assert_eq!(
        post(&http, &silo.base, "ledger/l", "deposit", "5").await,
        (200, "5".into())
    );
    assert_eq!(
        post(&http, &silo.base, "probe/p", "set", "3").await,
        (200, "3".into())
    );
    let (_, kinds_listed) = http_get(&http, &silo.base, "/v1/kinds").await;
    for kind in kinds {
        assert!(
            kinds_listed.contains(&format!("\"{kind}\"")),
            "{kinds_listed}"
        );
    }
    let log = silo.log_text();
    let warned = log.matches("corrupt compile-cache entry").count()
        + log.matches("unusable compile-cache entry").count();
    assert_eq!(warned, kinds.len(), "one warning per damaged entry:\n{log}");
    // Each entry was rewritten with a good compilation.
    for (entry, broken) in damaged {
        let now = std::fs::read(&entry).unwrap();
        assert_ne!(now, broken, "{} was not rewritten", entry.display());
        assert_eq!(Sha256::digest(&now[32..]).as_slice(), &now[..32]);
    }
}

// ---------------------------------------------------------------------------------------
// The store: corrupt, foreign, future version

/// SHA-256 of every file under `dir`, by relative path.
fn hashes(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let digest = Sha256::digest(std::fs::read(&path).unwrap());
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), hex);
            }
        }
    }
    out
}

/// Opens the sled database in `db` as the silo configures it, waiting while the previous
/// handle's threads still hold its lock (sled releases it shortly after the drop).
fn open_sled(db: &Path) -> sled::Db {
    let started = Instant::now();
    loop {
        match sled::Config::new()
            .path(db)
            .mode(sled::Mode::HighThroughput)
            .open()
        {
            Ok(db) => return db,
            Err(e) if e.to_string().contains("lock") && started.elapsed().as_secs() < 10 => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("opening {}: {e}", db.display()),
        }
    }
}

/// Every record of the sled database in `db`, read with sled itself.
fn records(db: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let db = open_sled(db);
    db.iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

const STATES: usize = 50;

/// A data directory as a silo leaves it: committed state of `STATES` grains and a reminder.
async fn data_dir_with_state(data_dir: &Path) {
    std::fs::create_dir_all(data_dir).unwrap();
    let storage = granary_tests::open_store(&data_dir.join("db")).unwrap();
    for i in 0..STATES {
        let mut commit = TurnCommit::new(GrainId::parse("counter", &format!("c{i}")).unwrap());
        commit.state = Some(StateChange::Write(
            format!("{{\"value\":{i}}}").into_bytes(),
        ));
        storage.commit(commit).wait().await.unwrap();
    }
    let mut commit = TurnCommit::new(GrainId::parse("probe", "r").unwrap());
    commit.reminders.push(ReminderChange::Put(ReminderRecord {
        name: "tick".into(),
        schedule: Schedule::Every { period_ms: 60_000 },
        missed: MissedPolicy::FireOnce,
        next_due_ms: u64::MAX / 2,
        history: Default::default(),
    }));
    storage.commit(commit).wait().await.unwrap();
    storage.flush().unwrap();
}

/// Runs `granary serve` on `data`; it must exit non-zero on its own, without ever serving.
/// Returns everything it logged.
fn serve_must_refuse(data: &Path) -> String {
    let grains = grains_dir(&["counter"]);
    let log_path = data.with_extension("refusal.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(granary_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--grains"])
        .arg(grains.path())
        .arg("--data")
        .arg(data)
        .env("GRANARY_CACHE_DIR", shared_cache_dir())
        .env("GRANARY_LOCK_WAIT_MS", "2000")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let text = read_log();
        if text.contains("state=Serving") || started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("granary serve started serving a store it must refuse; log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = read_log();
    assert!(
        !status.success(),
        "exit 0 on a store it must refuse:\n{text}"
    );
    assert!(
        !text.contains("panicked"),
        "the silo panicked instead of refusing:\n{text}"
    );
    text
}

/// `serve` refuses `data`, names the directory and one of the `reasons`, and every record
/// is still there (read with sled before and after).
fn assert_refused_records_intact(data: &Path, reasons: &[&str]) -> String {
    let db = data.join("db");
    let before = db.is_dir().then(|| records(&db));
    let log = serve_must_refuse(data);
    assert_names_dir_and_reason(&log, data, reasons);
    if let Some(before) = before {
        assert_eq!(records(&db), before, "refusing changed records");
    }
    log
}

fn assert_names_dir_and_reason(log: &str, data: &Path, reasons: &[&str]) {
    assert!(
        log.contains(&data.join("db").display().to_string()),
        "the error does not name the directory:\n{log}"
    );
    assert!(
        reasons.iter().any(|r| log.contains(r)),
        "the error does not say why (one of {reasons:?}):\n{log}"
    );
}

/// `serve` refuses `data` and leaves every byte of it as it was.
fn assert_refused_byte_identical(data: &Path, reasons: &[&str]) -> String {
    let before = hashes(data);
    let log = serve_must_refuse(data);
    assert_names_dir_and_reason(&log, data, reasons);
    assert_eq!(
        hashes(data),
        before,
        "refusing changed files of the data directory"
    );
    log
}

/// What a newer Granary leaves: its format in the marker and in the header record.
async fn future_version(data: &Path) {
    data_dir_with_state(data).await;
    let db = open_sled(&data.join("db"));
    db.insert(b"mformat", &99u32.to_be_bytes()).unwrap();
    db.flush().unwrap();
    drop(db);
    std::fs::write(data.join("db.format"), "granary-storage 99 ready\n").unwrap();
}

async fn corrupt_header(data: &Path) {
    data_dir_with_state(data).await;
    let db = open_sled(&data.join("db"));
    db.insert(b"mformat", &b"\x01"[..]).unwrap();
    db.flush().unwrap();
}

fn foreign_database(data: &Path) {
    let db = open_sled(&data.join("db"));
    db.insert(b"user:1", b"somebody else's data").unwrap();
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_a_future_version_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    future_version(&data).await;
    let log = assert_refused_byte_identical(&data, &["newer Granary"]);
    assert!(log.contains("format 99"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_header_behind_a_current_marker_is_refused() {
    // The header record says 99 while the marker says 1: refused by the header check.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    future_version(&data).await;
    std::fs::write(data.join("db.format"), "granary-storage 1 ready\n").unwrap();
    assert_refused_records_intact(&data, &["newer Granary"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_format_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    corrupt_header(&data).await;
    assert_refused_records_intact(&data, &["format header is corrupt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_format_marker_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    data_dir_with_state(&data).await;
    std::fs::write(data.join("db.format"), "\0\0garbage\n").unwrap();
    assert_refused_byte_identical(&data, &["not a Granary storage marker"]);
}

#[test]
fn a_foreign_sled_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    foreign_database(&data);
    assert_refused_byte_identical(&data, &["did not write"]);
}

#[test]
fn a_foreign_directory_is_refused_untouched() {
    // `db` is not a sled directory: a file where the directory should be.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("db"), b"not a database\n").unwrap();
    assert_refused_byte_identical(&data, &["did not write"]);

    // A directory of someone else's files, none of them sled's.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("db")).unwrap();
    std::fs::write(data.join("db/README"), b"my files\n").unwrap();
    assert_refused_byte_identical(&data, &["did not write"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_a_corrupt_conf_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    data_dir_with_state(&data).await;
    let conf = data.join("db/conf");
    let len = std::fs::metadata(&conf).unwrap().len() as usize;
    std::fs::write(&conf, vec![0u8; len]).unwrap();
    assert_refused_byte_identical(&data, &["cannot open database"]);
}

/// The damage a crash, a bad disk or an operator can do to sled's log (`db/db`), which
/// sled itself does not detect: it recovers up to the first bad record and opens the
/// rest as if it never existed.
fn damage_log(db: &Path, how: &str) {
    let log = db.join("db");
    let bytes = std::fs::read(&log).unwrap();
    match how {
        "garbage" => std::fs::write(&log, vec![0xa5u8; bytes.len()]).unwrap(),
        "truncated" => std::fs::write(&log, &bytes[..100]).unwrap(),
        "deleted" => std::fs::remove_file(&log).unwrap(),
        "flipped" => {
            let mut bytes = bytes;
            let middle = bytes.len() / 2;
            for b in &mut bytes[middle..middle + 64] {
                *b ^= 0xff;
            }
            std::fs::write(&log, bytes).unwrap();
        }
        other => panic!("unknown damage {other}"),
    }
}

/// A log overwritten, truncated or deleted: sled opens it as an empty database; the
/// marker says the store was initialized, so the silo refuses instead of serving it as a
/// new, empty store (a silent reset of every grain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_a_destroyed_log_is_refused() {
    for how in ["garbage", "truncated", "deleted"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        data_dir_with_state(&data).await;
        damage_log(&data.join("db"), how);
        let log = serve_must_refuse(&data);
        assert_names_dir_and_reason(&log, &data, &["damaged"]);
        assert!(log.contains("backup"), "{how}: no advice:\n{log}");
    }
}

/// Only another process holding the store is worth waiting for: any other error opening
/// it (here the watermark cannot be read) fails at once, naming its cause, instead of
/// being reported as a lock for `lock_wait_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_watermark_fails_at_once_and_is_not_called_a_lock() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    data_dir_with_state(&data).await;
    let watermark = data.join("db.watermark");
    std::fs::remove_file(&watermark).unwrap();
    std::fs::create_dir(&watermark).unwrap();
    let log = serve_must_refuse(&data);
    assert!(log.contains("db.watermark"), "{log}");
    assert!(!log.contains("locked"), "{log}");
    let waited: u64 = log
        .split("(waited ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wait figure in the error:\n{log}"));
    // serve_must_refuse allows a 2 s lock wait; nothing of it was spent.
    assert!(waited < 1_000, "{log}");
}

/// A damaged store must be left as it was found, for an operator (or a recovery tool) to
/// inspect: sled rewrites a damaged log when it opens it, so the silo copies the store
/// before sled opens it and puts the copy back when it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_a_damaged_store_leaves_it_untouched() {
    for how in ["garbage", "truncated", "flipped"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        data_dir_with_state(&data).await;
        damage_log(&data.join("db"), how);
        eprintln!("damage: {how}");
        assert_refused_byte_identical(&data, &["damaged", "corrupt"]);
    }
}

/// Damage in the middle of the log: sled keeps the records before it and drops the rest
/// without an error (30 of 51 records in a direct experiment); the header record survives.
/// The commit watermark shows that flushed commits are missing, so the store is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_a_log_damaged_midway_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    data_dir_with_state(&data).await;
    damage_log(&data.join("db"), "flipped");
    let log = assert_refused_byte_identical(&data, &["had been flushed"]);
    assert!(log.contains("backup"), "no advice:\n{log}");
}

// ---------------------------------------------------------------------------------------
// Full disk

/// A data directory whose database directory (`<data>/db`) is a tmpfs of `mib` MiB, so
/// the silo's log and the data directory itself stay on the real disk. Unmounted on drop.
struct SmallDisk {
    root: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> Result<Self, String> {
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        let db = root.path().join("data/db");
        std::fs::create_dir_all(&db).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&db)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Self { root })
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// A file on the small disk that fills it.
    fn filler(&self) -> PathBuf {
        self.data().join("db/filler")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(self.root.path().join("data/db"))
            .status();
    }
}

/// The last `n` lines of `log`.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes `path` until the file system is full.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    // Fill the last partial block too.
    while let Ok(n) = file.write(&chunk[..512]) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    let _ = file.sync_all();
    written
}

/// Mounts the small disk, or says why the test is skipped (mounting a tmpfs needs root).
fn small_disk(test: &str) -> Option<SmallDisk> {
    match SmallDisk::mount(32) {
        Ok(disk) => Some(disk),
        Err(e) => {
            eprintln!("SKIPPED {test}: cannot mount a tmpfs ({e}); this test needs root");
            None
        }
    }
}

/// Increments `counter/disk` until `failures` writes have failed (at most 400 attempts);
/// returns the last acknowledged value and the failed answers.
async fn write_until_refused(
    http: &reqwest::Client,
    base: &str,
    mut acked: u64,
    failures: usize,
) -> (u64, Vec<(u16, String)>) {
    let mut failed = Vec::new();
    for _ in 0..400 {
        let (status, body) = post(http, base, "counter/disk", "increment", "1").await;
        if status == 200 {
            let value: u64 = body.parse().unwrap();
            assert!(value > acked, "{value} after {acked}");
            acked = value;
        } else {
            failed.push((status, body));
            if failed.len() == failures {
                break;
            }
        }
    }
    (acked, failed)
}

/// sled's I/O errors are sticky: after a failed write the database cannot write again, and a
/// batch whose flush failed may be visible to reads. So the first failed write stalls the
/// store: `/readyz` 503, every call refused, none acknowledged. A full disk is not a reason
/// to restart (`/healthz` stays 200): the silo reopens its store, as a restart would, once
/// space returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_unacknowledged_and_the_silo_recovers() {
    let Some(disk) = small_disk("a_full_disk_fails_writes_unacknowledged_and_the_silo_recovers")
    else {
        return;
    };
    let grains = grains_dir(&["counter"]);
    let data = disk.data();
    let silo = ChildSilo::spawn(grains.path(), &data, &[]);
    let http = reqwest::Client::new();
    for i in 1..=20 {
        assert_eq!(
            post(&http, &silo.base, "counter/disk", "increment", "1").await,
            (200, i.to_string())
        );
    }
    assert_eq!(
        post(&http, &silo.base, "counter/reader", "increment", "5").await,
        (200, "5".into())
    );
    let filled = fill(&disk.filler());
    let (acked, failed) = write_until_refused(&http, &silo.base, 20, 20).await;
    eprintln!(
        "full disk: filled {filled} bytes; {} writes refused after the last ack at {acked}",
        failed.len()
    );
    assert_eq!(failed.len(), 20, "writes kept succeeding on a full disk");
    for (status, body) in &failed {
        assert_eq!(
            (*status, error_code(body).as_str()),
            (503, "overloaded"),
            "{body}"
        );
    }
    // Unready while the disk is full, and no turn runs: none can read the write that failed.
    assert_eq!(silo.status("/readyz"), Some(503));
    assert_eq!(silo.status("/healthz"), Some(200));
    let (status, body) = post(&http, &silo.base, "counter/reader", "get", "").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (503, "overloaded"),
        "{body}"
    );
    let log = silo.log_text();
    assert!(
        log.contains("storage failed; turn not acknowledged") && log.contains("No space left"),
        "no log line names the cause:\n{}",
        tail(&log, 20)
    );
    assert!(log.contains("the disk is full"), "{}", tail(&log, 20));

    // Space returns: the silo reopens its store by itself and serves again.
    std::fs::remove_file(disk.filler()).unwrap();
    let started = Instant::now();
    while silo.status("/readyz") != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the silo did not recover after space returned:\n{}",
            tail(&silo.log_text(), 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "full disk: healthy again {} ms after space returned",
        started.elapsed().as_millis()
    );
    assert!(silo.log_text().contains("storage reopened"));
    let value = counter_within(&http, &silo.base, acked).await;
    assert_eq!(
        post(&http, &silo.base, "counter/disk", "increment", "1").await,
        (200, (value + 1).to_string())
    );
    assert_eq!(
        post(&http, &silo.base, "counter/reader", "get", "").await,
        (200, "5".into())
    );

    // What the recovered silo acknowledged survives a crash.
    silo.kill9();
    let silo = ChildSilo::spawn(grains.path(), &data, &[]);
    assert_eq!(
        post(&http, &silo.base, "counter/disk", "get", "").await,
        (200, (value + 1).to_string())
    );
}

/// The counter holds every acknowledged increment, and at most the one write that hit the
/// full disk (never acknowledged) more.
async fn counter_within(http: &reqwest::Client, base: &str, acked: u64) -> u64 {
    let (status, body) = post(http, base, "counter/disk", "get", "").await;
    assert_eq!(status, 200, "{body}");
    let value: u64 = body.parse().unwrap();
    eprintln!("full disk: {acked} acknowledged, {value} after recovering");
    assert!(
        value >= acked,
        "acknowledged writes lost: {value} < {acked}"
    );
    assert!(
        value <= acked + 1,
        "{value} > {acked} + 1: refused writes were applied"
    );
    value
}

// ---------------------------------------------------------------------------------------
// Property tests: grain ids, the config loader, the gateway

/// The documented grammar, written independently of the implementation.
fn kind_is_valid(kind: &str) -> bool {
    let b = kind.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn key_is_valid(key: &str) -> bool {
    !key.is_empty() && key.len() <= 256 && !key.chars().any(|c| c.is_control())
}

fn kind_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,62}",
        "[a-z][a-z0-9-]{60,70}",
        "[a-zA-Z0-9_./-]{0,10}",
        "[a-z]{1,5}[\\x00-\\x1f/.\\\\]{1,3}[a-z]{0,5}",
        any::<String>(),
        Just("..".to_owned()),
        Just("a".repeat(1024)),
    ]
}

fn key_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{1,40}",
        any::<String>(),
        "[a-z]{0,3}[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}][a-z]{0,3}",
        "[\\x20-\\x7e]{250,260}",
        "[ü€😀]{60,70}",
        Just(String::new()),
        Just("../../etc/passwd".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn grain_id_parse_accepts_exactly_the_grammar(kind in kind_strategy(), key in key_strategy()) {
        let parsed = GrainId::parse(&kind, &key);
        let valid = kind_is_valid(&kind) && key_is_valid(&key);
        prop_assert_eq!(parsed.is_ok(), valid, "kind {:?} key {:?}: {:?}", kind, key, parsed);
        match parsed {
            Ok(id) => {
                prop_assert_eq!(&id.kind, &kind);
                prop_assert_eq!(&id.key, &key);
                prop_assert_eq!(id.to_string(), format!("{kind}/{key}"));
            }
            Err(e) => {
                // Errors stay short and free of control characters, whatever came in.
                let text = e.to_string();
                prop_assert!(text.len() < 400, "{}", text);
                prop_assert!(!text.chars().any(|c| c.is_control()), "{:?}", text);
            }
        }
    }
}

/// The configuration's keys, plus the table key and one it does not know.
fn config_keys() -> Vec<&'static str> {
    let mut keys = granary::config::ENV_KEYS.to_vec();
    keys.extend(["kinds", "no_such_key"]);
    keys
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("1e400".to_owned()),
        Just("nan".to_owned()),
        Just("inf".to_owned()),
        Just("18446744073709551616".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<String>().prop_map(|s| format!("{s:?}")),
        Just("\"127.0.0.1:0\"".to_owned()),
        Just("\"[::1]:8080\"".to_owned()),
        Just("\"json\"".to_owned()),
        Just("[1, 2]".to_owned()),
        Just("{ memory_limit_bytes = 1 }".to_owned()),
        Just("{ counter = { memory_limit_bytes = 65536, turn_timeout_ms = 0 } }".to_owned()),
        Just("{ \"Bad/Kind\" = {} }".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
    ]
}

fn toml_text() -> impl Strategy<Value = String> {
    prop_oneof![
        // Plausible files: known and unknown keys with values of any type.
        prop::collection::vec((prop::sample::select(config_keys()), toml_value()), 0..8).prop_map(
            |pairs| {
                pairs
                    .into_iter()
                    .map(|(k, v)| format!("{k} = {v}\n"))
                    .collect::<String>()
            }
        ),
        // Tables and sections.
        (
            prop::sample::select(&["counter", "Bad_Kind", "a/b", ""][..]),
            toml_value(),
            toml_value()
        )
            .prop_map(|(kind, a, b)| format!(
                "[kinds.\"{kind}\"]\nmemory_limit_bytes = {a}\nturn_timeout_ms = {b}\n"
            )),
        // Anything at all.
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn env_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        prop::sample::select(config_keys()).prop_map(|k| format!("GRANARY_{}", k.to_uppercase())),
        "GRANARY_[A-Za-z_]{0,20}",
        Just("GRANARY_".to_owned()),
        Just("granary_listen".to_owned()),
    ];
    let value = prop_oneof![
        any::<String>(),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("true".to_owned()),
        Just("1\nadmin_token = \"x\"".to_owned()),
        Just("{ a = 1 }".to_owned()),
        Just("[1,".to_owned()),
        Just(String::new()),
    ];
    prop::collection::vec((name, value), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn config_load_never_panics(text in toml_text(), env in env_pairs(), use_file in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("granary.toml");
        std::fs::write(&path, &text).unwrap();
        let file = use_file.then_some(path.as_path());
        match granary::Config::load(file, env.clone()) {
            Ok(config) => {
                // What loads is usable: the validation rules hold.
                prop_assert!(config.max_activations >= 1);
                prop_assert!(config.mailbox_capacity >= 1);
                prop_assert!(config.turn_timeout_ms >= 1 && config.call_timeout_ms >= 1);
                prop_assert!(config.memory_limit_bytes >= 65536);
                prop_assert!(config.min_reminder_period_ms >= 100);
                for kind in config.kinds.keys() {
                    prop_assert!(kind_is_valid(kind), "{:?}", kind);
                }
            }
            Err(e) => {
                let text = format!("{e:#}");
                prop_assert!(!text.trim().is_empty());
            }
        }
    }
}

/// `segment` percent-encoded: every byte outside `[A-Za-z0-9_-]` as `%XX`.
fn encode(segment: &[u8]) -> String {
    segment
        .iter()
        .map(|b| {
            if b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-' {
                (*b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn segment(known: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    // Mostly names that exist, so that the grains are reached and their answers (200,
    // 422, 400 for a bad payload) are tested too, not only the gateway's refusals.
    prop_oneof![
        12 => prop::sample::select(known).prop_map(|s| s.as_bytes().to_vec()),
        1 => "[a-zA-Z0-9_./ -]{0,12}".prop_map(String::into_bytes),
        1 => any::<String>().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..40),
        1 => prop::collection::vec(any::<u8>(), 250..300),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        16 => prop::sample::select(&[
            "", "1", "0", "-1", "18446744073709551615", "18446744073709551616", "null",
            "\"x\"", "{}", "[]", "{\"to\":\"b\",\"amount\":1}", "{\"to\":\"\\u0000\",\"amount\":1}",
            "{\"account\":\"x\"}", "{\"to\":\"a\",\"amount\":18446744073709551615}", "1e999",
        ][..]).prop_map(|s| s.as_bytes().to_vec()),
        2 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::collection::vec(any::<u8>(), 4000..4200),
    ]
}

const PLAUSIBLE: &[(&str, &str, &str)] = &[
    ("counter", "increment", "1"),
    ("counter", "increment", ""),
    ("counter", "increment", "18446744073709551615"),
    ("counter", "get", ""),
    ("counter", "reset", "null"),
    ("ledger", "deposit", "5"),
    ("ledger", "balance", ""),
    ("ledger", "credit", "1"),
    ("ledger", "transfer", r#"{"to":"bob","amount":1}"#),
    (
        "ledger",
        "transfer",
        r#"{"to":"carol","amount":1000000000}"#,
    ),
    ("ledger", "transfer", r#"{"to":"a\u0000b","amount":0}"#),
    ("ledger", "peek", r#"{"account":"alice"}"#),
    ("ledger", "mirror", r#"{"account":"bob"}"#),
];

/// Arbitrary kind, key, method and payload through the real gateway: every answer is a
/// client error or a success, never a 5xx, never a hang.
#[test]
fn gateway_answers_arbitrary_requests_with_client_errors() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Probe's hostile methods are reachable only by name; the strategy never names probe.
    let silo = rt.block_on(TestSilo::start_with(|c| c.max_payload_bytes = 4096));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let arbitrary = (
        segment(&["counter", "ledger", "nosuch", "Counter"]),
        segment(&["alice", "bob", "a b", "ü"]),
        segment(&[
            "increment",
            "get",
            "reset",
            "deposit",
            "balance",
            "transfer",
            "credit",
            "peek",
            "mirror",
            "reminders",
            "nosuch",
        ]),
        payload(),
    );
    // Requests the grains accept (200) or refuse on their own terms (422), on any key.
    let plausible = (
        prop::sample::select(PLAUSIBLE),
        segment(&["alice", "bob", "a b", "ü"]),
    )
        .prop_map(|((kind, method, body), key)| {
            (
                kind.as_bytes().to_vec(),
                key,
                method.as_bytes().to_vec(),
                body.as_bytes().to_vec(),
            )
        });
    let strategy = prop_oneof![arbitrary, plausible];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let seen = std::cell::RefCell::new(BTreeMap::new());
    runner
        .run(&strategy, |(kind, key, method, body)| {
            let url = format!(
                "{}/v1/grains/{}/{}/{}",
                silo.base,
                encode(&kind),
                encode(&key),
                encode(&method)
            );
            // `.` and `..` are resolved by the URL parser before anything is sent.
            for s in [&kind, &key, &method] {
                prop_assume!(s.as_slice() != b"." && s.as_slice() != b"..");
            }
            let (status, text) = rt.block_on(async {
                let r = http
                    .post(&url)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{url}: no answer: {e}"));
                (r.status().as_u16(), r.text().await.unwrap_or_default())
            });
            *seen.borrow_mut().entry(status).or_insert(0u32) += 1;
            prop_assert!(
                [200, 400, 404, 413, 422].contains(&status),
                "{} with {} bytes: {} {}",
                url,
                body.len(),
                status,
                text
            );
            Ok(())
        })
        .unwrap();
    let seen = seen.into_inner();
    eprintln!("gateway property test: statuses {seen:?}");
    assert!(
        seen.len() >= 4,
        "the strategy reached too few outcomes: {seen:?}"
    );
    rt.block_on(async {
        assert_eq!(silo.get("/healthz").await.0, 200);
        silo.shutdown().await;
    });
}

// ---------------------------------------------------------------------------------------
// Golden files: the on-disk encoding of state, reminder and outbox records

fn golden_dir() -> PathBuf {
    granary_tests::workspace_root().join("tests/goldenfiles")
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for line in bytes.chunks(32) {
        out.push_str(&line.iter().map(|b| format!("{b:02x}")).collect::<String>());
        out.push('\n');
    }
    out
}

/// Compares `bytes` with `tests/goldenfiles/<name>`; `GRANARY_BLESS=1` rewrites the file.
fn golden(name: &str, bytes: &[u8]) {
    let path = golden_dir().join(name);
    let text = hex(bytes);
    if std::env::var_os("GRANARY_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; write it with GRANARY_BLESS=1 (only for an intended format change, \
             which also bumps FORMAT_VERSION)",
            path.display()
        )
    });
    assert_eq!(
        text, expected,
        "the on-disk encoding of {name} changed: old data would be misread. Bump \
         FORMAT_VERSION and migrate, then bless with GRANARY_BLESS=1"
    );
}

fn golden_reminder() -> ReminderRecord {
    let mut history = std::collections::VecDeque::new();
    history.push_back(TickOutcome {
        scheduled_ms: 1_700_000_000_000,
        fired_ms: 1_700_000_000_123,
        attempts: 1,
        error: None,
    });
    history.push_back(TickOutcome {
        scheduled_ms: 1_700_000_060_000,
        fired_ms: 1_700_000_061_000,
        attempts: 3,
        error: Some("overloaded".into()),
    });
    ReminderRecord {
        name: "tick".into(),
        schedule: Schedule::Every { period_ms: 60_000 },
        missed: MissedPolicy::CatchUp(5),
        next_due_ms: 1_700_000_120_000,
        history,
    }
}

fn golden_outbox() -> OutboxEntry {
    OutboxEntry {
        sender: GrainId::parse("ledger", "alice").unwrap(),
        target: GrainId::parse("ledger", "bob").unwrap(),
        method: "credit".into(),
        payload: b"30".to_vec(),
    }
}

#[test]
fn golden_record_encodings() {
    golden(
        "reminder_record.postcard.hex",
        &postcard::to_stdvec(&golden_reminder()).unwrap(),
    );
    let cron = ReminderRecord {
        schedule: Schedule::Cron("0 */5 * * * *".into()),
        missed: MissedPolicy::Skip,
        history: Default::default(),
        ..golden_reminder()
    };
    golden(
        "reminder_record_cron.postcard.hex",
        &postcard::to_stdvec(&cron).unwrap(),
    );
    golden(
        "outbox_entry.postcard.hex",
        &postcard::to_stdvec(&golden_outbox()).unwrap(),
    );
}

/// The records as the store writes them: raw state bytes under `s kind NUL key`, the
/// postcard records above under their keys, and the format header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_store_layout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let storage = granary_tests::open_store(&db).unwrap();
        let alice = GrainId::parse("ledger", "alice").unwrap();
        let mut commit = TurnCommit::new(alice.clone());
        commit.state = Some(StateChange::Write(br#"{"balance":70}"#.to_vec()));
        commit.sends.push(golden_outbox());
        commit
            .reminders
            .push(ReminderChange::Put(golden_reminder()));
        storage.commit(commit).wait().await.unwrap();
    }
    let db = open_sled(&db);
    let get = |key: &[u8]| {
        db.get(key)
            .unwrap()
            .unwrap_or_else(|| panic!("no record under {:?}", String::from_utf8_lossy(key)))
            .to_vec()
    };
    assert_eq!(get(b"mformat"), 1u32.to_be_bytes(), "format header");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("db.format")).unwrap(),
        "granary-storage 1 ready\n",
        "format marker"
    );
    assert_eq!(get(b"sledger\0alice"), br#"{"balance":70}"#);
    assert_eq!(
        get(b"rledger\0alice\0tick"),
        postcard::to_stdvec(&golden_reminder()).unwrap()
    );
    golden(
        "reminder_record.postcard.hex",
        &get(b"rledger\0alice\0tick"),
    );
    let mut index = b"i".to_vec();
    index.extend_from_slice(&1_700_000_120_000u64.to_be_bytes());
    index.extend_from_slice(b"ledger\0alice\0tick");
    assert_eq!(get(&index), b"");
    assert_eq!(get(b"mreminders"), 1u64.to_be_bytes());
    let outbox: Vec<_> = db.scan_prefix(b"o").map(|kv| kv.unwrap()).collect();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].0.len(), 9, "o + big-endian u64 id");
    golden("outbox_entry.postcard.hex", &outbox[0].1);
}
