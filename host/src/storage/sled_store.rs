//! The embedded sled engine with group commit.
//!
//! One committer thread takes every commit that arrived while the previous flush ran,
//! builds their writes into one sled batch (each commit's writes all or none), applies it
//! and flushes once: one `apply_batch` and one fsync acknowledge the whole group.
//! sled only fsyncs on its own timer, so nothing is acknowledged before `flush` returns.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;

use super::format::{self, FORMAT_VERSION, Marker};
use super::open_copy::OpenCopy;
use super::watermark::{self, Watermark};
use super::{
    DueReminder, Durable, Health, MessageId, OutboxEntry, StateChange, Storage, StorageError,
    TurnCommit, keys,
};
use crate::grain_id::GrainId;
use crate::reminders::{ReminderAdvance, ReminderChange, ReminderRecord};

/// Most batches folded into one flush, so a flood of commits still gets regular acks.
const MAX_GROUP: usize = 4096;
/// How often a store stalled by a full disk tries to reopen.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// What the committer thread turns into one atomic batch. Batches are built there, the
/// only writer, so read-modify-write changes (reminder replacement, conditional advance,
/// the reminder count) see every earlier commit.
enum Work {
    Turn(TurnCommit),
    Ack(MessageId, GrainId),
    Advance(GrainId, ReminderAdvance),
    DropIndex(DueReminder),
}

struct Job {
    work: Work,
    done: tokio::sync::oneshot::Sender<Result<(), StorageError>>,
}

/// The open database. The committer closes and reopens it after a full disk; readers see
/// "unavailable" meanwhile.
#[derive(Clone)]
struct Handle(Arc<RwLock<Option<sled::Db>>>);

impl Handle {
    fn get(&self) -> Result<sled::Db, StorageError> {
        let db = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        db.ok_or_else(|| StorageError::Transient("storage is closed while it reopens".into()))
    }

    fn replace(&self, db: Option<sled::Db>) -> Option<sled::Db> {
        let mut slot = self.0.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut slot, db)
    }
}

pub struct SledStorage {
    db: Handle,
    /// Feeds the committer thread; `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    /// Joined on drop, so the database is closed (its lock released) when the storage is.
    committer: Option<std::thread::JoinHandle<()>>,
    /// Stored reminders; written by the committer, persisted with each batch changing it.
    reminder_count: Arc<AtomicU64>,
    /// Set by the committer when a write fails and when the store reopens.
    health: HealthCell,
}

/// [`Health`] shared between the committer and readers.
#[derive(Clone, Default)]
struct HealthCell(Arc<AtomicU8>);

impl HealthCell {
    fn get(&self) -> Health {
        decode_health(self.0.load(Ordering::Acquire))
    }

    /// Sets `health`; returns what it was.
    fn set(&self, health: Health) -> Health {
        decode_health(self.0.swap(health as u8, Ordering::AcqRel))
    }
}

fn decode_health(code: u8) -> Health {
    match code {
        0 => Health::Healthy,
        1 => Health::Stalled,
        _ => Health::Failed,
    }
}

impl Drop for SledStorage {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.committer.take() {
            let _ = thread.join();
        }
    }
}

impl SledStorage {
    /// Opens (or creates) the database under `dir`, checking the format header and that no
    /// flushed commit is missing. A store refused as unusable is left as it was found when
    /// it holds at most `copy_max_bytes` (see [`OpenCopy`]).
    pub fn open(
        dir: &Path,
        copy_max_bytes: u64,
        flush_seconds: Histogram,
    ) -> Result<Self, StorageError> {
        OpenCopy::recover(dir)?;
        let marker = format::read(dir)?;
        if marker == Marker::Absent {
            format::write(dir, Marker::New)?;
        }
        let copy = match marker {
            Marker::Ready => {
                ensure_unlocked(dir)?;
                OpenCopy::take(dir, copy_max_bytes)?
            }
            Marker::New | Marker::Absent => {
                watermark::reset(dir)?;
                None
            }
        };
        let opened = open_checked(dir, marker);
        match (&opened, copy) {
            (Ok(_), Some(copy)) => copy.discard()?,
            (Err(StorageError::Fatal(_)), Some(copy)) => copy.restore()?,
            // Nothing was opened (the lock is held elsewhere, or reading the watermark
            // failed): the store was not touched.
            (Err(StorageError::Locked(_) | StorageError::Transient(_)), Some(copy)) => {
                copy.discard()?
            }
            (_, None) => {}
        }
        let (db, commits) = opened?;
        if marker != Marker::Ready {
            format::write(dir, Marker::Ready)?;
        }
        let count = read_u64(&db, "reminders")?;
        let reminder_count = Arc::new(AtomicU64::new(count));
        let (jobs, rx) = mpsc::channel();
        let health = HealthCell::default();
        let handle = Handle(Arc::new(RwLock::new(Some(db.clone()))));
        let committer = Committer {
            dir: dir.to_owned(),
            db: Some(db),
            handle: handle.clone(),
            stalled: None,
            reopen_failures: 0,
            count: reminder_count.clone(),
            health: health.clone(),
            flush_seconds,
            commits,
            watermark: Watermark::create(dir)?,
        };
        let committer = std::thread::Builder::new()
            .name("granary-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| StorageError::Fatal(format!("starting the commit thread: {e}")))?;
        Ok(Self {
            db: handle,
            jobs: Some(jobs),
            committer: Some(committer),
            reminder_count,
            health,
        })
    }

    fn submit(&self, work: Work) -> Durable {
        let (done, durable) = Durable::pair();
        // A send error means the committer is gone; `Durable::wait` reports that.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job { work, done });
        }
        durable
    }
}

/// Opens sled and checks what it recovered; the database is closed again on an error.
fn open_checked(dir: &Path, marker: Marker) -> Result<(sled::Db, u64), StorageError> {
    let flushed = watermark::read(dir)?;
    let db = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|e| open_error(dir, e))?;
    check_header(&db, marker)?;
    let commits = read_u64(&db, "commits")?;
    watermark::check(dir, commits, flushed)?;
    Ok((db, commits))
}

fn locked(dir: &Path, detail: impl std::fmt::Display) -> StorageError {
    StorageError::Locked(format!(
        "{} is locked by another process (is a previous silo still running?): {detail}",
        dir.display()
    ))
}

/// Fails like sled's own open would when another process holds the store, before the
/// store is copied: a live store must be neither copied nor put back.
fn ensure_unlocked(dir: &Path) -> Result<(), StorageError> {
    let Ok(log) = std::fs::File::open(dir.join("db")) else {
        return Ok(());
    };
    match log.try_lock() {
        Ok(()) => Ok(()),
        Err(e) => Err(locked(dir, e)),
    }
}

fn open_error(dir: &Path, e: sled::Error) -> StorageError {
    let text = e.to_string();
    if text.contains("lock") || text.contains("WouldBlock") {
        locked(dir, text)
    } else {
        StorageError::Fatal(format!("cannot open database in {}: {text}", dir.display()))
    }
}

/// The header record inside the database: a store the marker calls ready must have it
/// (else sled lost data and the store fails closed); a new one gets it.
fn check_header(db: &sled::Db, marker: Marker) -> Result<(), StorageError> {
    let key = keys::meta("format");
    let fatal = |m: String| StorageError::Fatal(m);
    match db.get(&key).map_err(|e| fatal(e.to_string()))? {
        Some(v) => {
            let bytes: [u8; 4] = v
                .as_ref()
                .try_into()
                .map_err(|_| fatal("format header is corrupt".into()))?;
            let found = u32::from_be_bytes(bytes);
            if found > FORMAT_VERSION {
                return Err(fatal(format!(
                    "data was written by a newer Granary (format {found}, this build reads up to {FORMAT_VERSION})"
                )));
            }
            Ok(())
        }
        None if marker == Marker::Ready => Err(fatal(
            "the database opened without its header record: its files are damaged or were \
             replaced; refusing to serve it as an empty store (restore it from a backup)"
                .into(),
        )),
        None if db.is_empty() => {
            db.insert(&key, &FORMAT_VERSION.to_be_bytes())
                .map_err(|e| fatal(e.to_string()))?;
            db.flush().map_err(|e| fatal(e.to_string()))?;
            Ok(())
        }
        None => Err(fatal(
            "the data directory holds a sled database that Granary did not write".into(),
        )),
    }
}

/// A silo-wide counter (`reminders`, `commits`); absent means zero.
fn read_u64(db: &sled::Db, name: &str) -> Result<u64, StorageError> {
    let value = db
        .get(keys::meta(name))
        .map_err(|e| StorageError::Fatal(e.to_string()))?;
    Ok(value
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

struct Committer {
    dir: PathBuf,
    /// `None` only while a reopen after a full disk has not succeeded yet.
    db: Option<sled::Db>,
    /// Shared with readers, so a reopen can close every handle of the old database.
    handle: Handle,
    /// Set when a write failed for lack of space, and at each failed reopen since: the
    /// committer tries to reopen the store once per `REOPEN_INTERVAL`, however many jobs
    /// arrive meanwhile.
    stalled: Option<Instant>,
    /// Failed reopens since the store stalled; a warning every minute says why.
    reopen_failures: u32,
    count: Arc<AtomicU64>,
    health: HealthCell,
    flush_seconds: Histogram,
    /// Sequence number of the last group batch, written into every batch.
    commits: u64,
    watermark: Watermark,
}

/// Writes of the jobs of one group: a single sled batch (one `apply_batch` and one flush
/// for the whole group), plus the reminder records written so far, so a later job of the
/// same group reads what an earlier one wrote.
struct Group {
    batch: sled::Batch,
    reminders: HashMap<Vec<u8>, Option<ReminderRecord>>,
    count: u64,
}

/// One job's writes, built completely before they join the group: a job that fails to
/// build leaves nothing behind.
struct Ops {
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    reminders: Vec<(Vec<u8>, Option<ReminderRecord>)>,
    count: u64,
}

impl Ops {
    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push((key, Some(value)));
    }

    fn remove(&mut self, key: Vec<u8>) {
        self.writes.push((key, None));
    }

    fn put_reminder(
        &mut self,
        grain: &GrainId,
        record: ReminderRecord,
    ) -> Result<(), StorageError> {
        let key = keys::reminder(grain, &record.name);
        self.insert(key.clone(), encode(&record)?);
        self.insert(
            keys::reminder_index(record.next_due_ms, grain, &record.name),
            Vec::new(),
        );
        self.reminders.push((key, Some(record)));
        Ok(())
    }

    fn delete_reminder(&mut self, grain: &GrainId, name: &str) {
        let key = keys::reminder(grain, name);
        self.remove(key.clone());
        self.reminders.push((key, None));
    }
}

impl Committer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            let first = if self.stalled.is_some() {
                match rx.recv_timeout(REOPEN_INTERVAL) {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(job) => Some(job),
                    Err(_) => break,
                }
            };
            if self
                .stalled
                .is_some_and(|at| at.elapsed() >= REOPEN_INTERVAL)
            {
                self.reopen();
            }
            let Some(first) = first else { continue };
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.write_group(jobs);
        }
        if let Some(db) = &self.db {
            let _ = db.flush();
        }
    }

    fn db(&self) -> &sled::Db {
        self.db
            .as_ref()
            .expect("the database is open while groups are written")
    }

    /// Builds the jobs into one batch, applies and flushes it, and answers every job.
    fn write_group(&mut self, mut jobs: Vec<Job>) {
        if self.db.is_none() || self.health.get() != Health::Healthy {
            for job in jobs {
                let _ = job.done.send(Err(StorageError::Transient(
                    "storage is unavailable after a failed write".into(),
                )));
            }
            return;
        }
        let mut group = Group {
            batch: sled::Batch::default(),
            reminders: HashMap::new(),
            count: self.count.load(Ordering::Relaxed),
        };
        let built: Vec<Result<(), StorageError>> = jobs
            .iter_mut()
            .map(|job| self.build(&mut group, &mut job.work))
            .collect();
        let count = group.count;
        if count != self.count.load(Ordering::Relaxed) {
            group
                .batch
                .insert(keys::meta("reminders"), &count.to_be_bytes());
        }
        self.commits += 1;
        group
            .batch
            .insert(keys::meta("commits"), &self.commits.to_be_bytes());
        let started = Instant::now();
        let db = self.db();
        let written = db
            .apply_batch(group.batch)
            .and_then(|()| db.flush().map(|_| ()));
        self.flush_seconds.observe(started.elapsed().as_secs_f64());
        match &written {
            Ok(()) => {
                self.count.store(count, Ordering::Relaxed);
                self.watermark.record(self.commits);
            }
            Err(e) => self.failed(e),
        }
        for (job, built) in jobs.into_iter().zip(built) {
            let result = match (built, &written) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(e), _) => Err(e),
                (_, Err(e)) => Err(transient(e)),
            };
            let _ = job.done.send(result);
        }
    }

    /// sled's I/O errors are sticky and a refused write stays in its in-memory tree, so the
    /// store stops serving. A full disk is worth waiting out: the committer reopens the
    /// store (as a restart would) once space returns. Any other I/O error needs a restart.
    fn failed(&mut self, e: &sled::Error) {
        // Readers too: sled's tree may hold the refused write.
        drop(self.handle.replace(None));
        let full = out_of_space(e);
        self.stalled = full.then(Instant::now);
        let health = if full {
            Health::Stalled
        } else {
            Health::Failed
        };
        if self.health.set(health) != Health::Healthy {
            return;
        }
        if full {
            tracing::error!(error = %e, "storage write failed: the disk is full; the silo reports itself unhealthy, refuses calls and reopens the store once space returns");
        } else {
            tracing::error!(error = %e, "storage write failed; the silo reports itself unhealthy and refuses calls until it restarts");
        }
    }

    /// Closes every handle of the database and opens it again, with the same checks as a
    /// start; on success the store serves again.
    fn reopen(&mut self) {
        drop(self.handle.replace(None));
        // Dropping the last handle flushes and closes sled; with the disk still full the
        // flush fails and the refused writes are gone, as they would be after a restart.
        drop(self.db.take());
        match open_checked(&self.dir, Marker::Ready).and_then(|(db, commits)| {
            // sled may open on a disk that is still full: only a flushed write shows that
            // space returned (rewriting the sequence it holds changes nothing).
            db.insert(keys::meta("commits"), &commits.to_be_bytes())
                .and_then(|_| db.flush())
                .map_err(transient)?;
            let count = read_u64(&db, "reminders")?;
            Ok((db, commits, count))
        }) {
            Ok((db, commits, count)) => {
                self.commits = commits;
                self.count.store(count, Ordering::Relaxed);
                self.handle.replace(Some(db.clone()));
                self.db = Some(db);
                self.stalled = None;
                self.reopen_failures = 0;
                self.health.set(Health::Healthy);
                tracing::info!("storage reopened after a full disk; the silo serves again");
            }
            Err(e) => {
                self.stalled = Some(Instant::now());
                self.reopen_failures += 1;
                if self.reopen_failures % 60 == 1 {
                    tracing::warn!(error = %e, attempts = self.reopen_failures, "storage not reopened yet; retrying every second");
                }
            }
        }
    }

    /// Adds one job's writes to the group, or nothing if building them fails.
    fn build(&self, group: &mut Group, work: &mut Work) -> Result<(), StorageError> {
        let mut ops = Ops {
            writes: Vec::new(),
            reminders: Vec::new(),
            count: group.count,
        };
        match work {
            Work::Turn(commit) => self.turn(group, &mut ops, commit)?,
            Work::Ack(id, receiver) => {
                ops.remove(keys::outbox(*id));
                ops.remove(keys::delivered(receiver, *id));
            }
            Work::Advance(grain, advance) => self.advance(group, &mut ops, grain, advance)?,
            Work::DropIndex(due) => {
                let current = self.reminder(group, &ops, &due.grain, &due.name)?;
                if current.is_none_or(|r| r.next_due_ms != due.due_ms) {
                    ops.remove(keys::reminder_index(due.due_ms, &due.grain, &due.name));
                }
            }
        }
        for (key, value) in ops.writes {
            match value {
                Some(v) => group.batch.insert(key, v),
                None => group.batch.remove(key),
            }
        }
        group.reminders.extend(ops.reminders);
        group.count = ops.count;
        Ok(())
    }

    fn turn(
        &self,
        group: &Group,
        ops: &mut Ops,
        commit: &mut TurnCommit,
    ) -> Result<(), StorageError> {
        let grain = &commit.grain;
        match commit.state.take() {
            Some(StateChange::Write(bytes)) => ops.insert(keys::state(grain), bytes),
            Some(StateChange::Clear) => ops.remove(keys::state(grain)),
            None => {}
        }
        for entry in &commit.sends {
            // generate_id is monotonic across restarts, so ids never repeat.
            let id = self.db().generate_id().map_err(transient)?;
            ops.insert(keys::outbox(id), encode(entry)?);
        }
        if let Some(id) = commit.delivered {
            ops.insert(keys::delivered(grain, id), Vec::new());
        }
        let replaced = |name: &str| {
            commit.reminders.iter().any(|c| match c {
                ReminderChange::Put(r) => r.name == name,
                ReminderChange::Delete(n) => n == name,
            })
        };
        // A tick whose turn also re-registered or cancelled its reminder: the turn wins.
        if let Some(advance) = &commit.advance
            && !replaced(&advance.name)
        {
            self.advance(group, ops, grain, advance)?;
        }
        for change in &commit.reminders {
            let name = match change {
                ReminderChange::Put(r) => &r.name,
                ReminderChange::Delete(n) => n,
            };
            let old = self.reminder(group, ops, grain, name)?;
            if let Some(old) = &old {
                ops.remove(keys::reminder_index(old.next_due_ms, grain, name));
            }
            match change {
                ReminderChange::Put(record) => {
                    ops.put_reminder(grain, record.clone())?;
                    if old.is_none() {
                        ops.count += 1;
                    }
                }
                ReminderChange::Delete(_) => {
                    if old.is_some() {
                        ops.delete_reminder(grain, name);
                        ops.count = ops.count.saturating_sub(1);
                    }
                }
            }
        }
        Ok(())
    }

    fn advance(
        &self,
        group: &Group,
        ops: &mut Ops,
        grain: &GrainId,
        advance: &ReminderAdvance,
    ) -> Result<(), StorageError> {
        let Some(mut record) = self.reminder(group, ops, grain, &advance.name)? else {
            return Ok(());
        };
        if record.next_due_ms != advance.expected_due_ms {
            return Ok(());
        }
        ops.remove(keys::reminder_index(
            record.next_due_ms,
            grain,
            &record.name,
        ));
        record.next_due_ms = advance.next_due_ms;
        record.record(advance.outcome.clone());
        ops.put_reminder(grain, record)
    }

    /// A reminder as this job sees it: its own writes, then the group's, then the database.
    fn reminder(
        &self,
        group: &Group,
        ops: &Ops,
        grain: &GrainId,
        name: &str,
    ) -> Result<Option<ReminderRecord>, StorageError> {
        let key = keys::reminder(grain, name);
        if let Some((_, record)) = ops.reminders.iter().rev().find(|(k, _)| *k == key) {
            return Ok(record.clone());
        }
        if let Some(record) = group.reminders.get(&key) {
            return Ok(record.clone());
        }
        load_reminder(self.db(), grain, name)
    }
}

fn out_of_space(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if matches!(io.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded))
}

fn load_reminder(
    db: &sled::Db,
    grain: &GrainId,
    name: &str,
) -> Result<Option<ReminderRecord>, StorageError> {
    let Some(bytes) = db.get(keys::reminder(grain, name)).map_err(transient)? else {
        return Ok(None);
    };
    decode(&bytes).map(Some)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(value).map_err(|e| StorageError::Fatal(format!("encoding a record: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::Fatal(format!("corrupt record: {e}")))
}

fn transient(e: impl std::fmt::Display) -> StorageError {
    StorageError::Transient(e.to_string())
}

impl Storage for SledStorage {
    fn load_state(&self, grain: &GrainId) -> Result<Option<Vec<u8>>, StorageError> {
        let value = self.db.get()?.get(keys::state(grain)).map_err(transient)?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn commit(&self, commit: TurnCommit) -> Durable {
        self.submit(Work::Turn(commit))
    }

    fn was_delivered(&self, receiver: &GrainId, id: MessageId) -> Result<bool, StorageError> {
        self.db
            .get()?
            .contains_key(keys::delivered(receiver, id))
            .map_err(transient)
    }

    fn pending_sends(
        &self,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<(MessageId, OutboxEntry)>, StorageError> {
        let start = match after {
            Some(id) => keys::outbox(id.saturating_add(1)),
            None => keys::outbox_prefix(),
        };
        let mut out = Vec::new();
        for item in self.db.get()?.range(start..).take(limit) {
            let (key, value) = item.map_err(transient)?;
            if !key.starts_with(&keys::outbox_prefix()) {
                break;
            }
            let id = keys::outbox_id(&key)
                .ok_or_else(|| StorageError::Fatal("corrupt outbox key".into()))?;
            let entry = decode(&value)?;
            out.push((id, entry));
        }
        Ok(out)
    }

    fn is_pending(&self, id: MessageId) -> Result<bool, StorageError> {
        self.db
            .get()?
            .contains_key(keys::outbox(id))
            .map_err(transient)
    }

    fn ack_send(&self, id: MessageId, receiver: &GrainId) -> Durable {
        self.submit(Work::Ack(id, receiver.clone()))
    }

    fn load_reminder(
        &self,
        grain: &GrainId,
        name: &str,
    ) -> Result<Option<ReminderRecord>, StorageError> {
        load_reminder(&self.db.get()?, grain, name)
    }

    fn reminders_of(&self, grain: &GrainId) -> Result<Vec<ReminderRecord>, StorageError> {
        self.db
            .get()?
            .scan_prefix(keys::reminders_of(grain))
            .map(|item| decode(&item.map_err(transient)?.1))
            .collect()
    }

    fn due_reminders(&self, until_ms: u64, limit: usize) -> Result<Vec<DueReminder>, StorageError> {
        let mut out = Vec::new();
        for item in self.db.get()?.scan_prefix(keys::reminder_index_prefix()) {
            let (key, _) = item.map_err(transient)?;
            let Some((due_ms, grain, name)) = keys::parse_reminder_index(&key) else {
                tracing::warn!(key = ?key, "skipping a malformed reminder index entry");
                continue;
            };
            if due_ms > until_ms || out.len() >= limit {
                break;
            }
            out.push(DueReminder {
                due_ms,
                grain,
                name,
            });
        }
        Ok(out)
    }

    fn advance_reminder(&self, grain: &GrainId, advance: ReminderAdvance) -> Durable {
        self.submit(Work::Advance(grain.clone(), advance))
    }

    fn drop_stale_index(&self, due: &DueReminder) -> Durable {
        self.submit(Work::DropIndex(due.clone()))
    }

    fn reminder_count(&self) -> u64 {
        self.reminder_count.load(Ordering::Relaxed)
    }

    fn health(&self) -> Health {
        self.health.get()
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.get()?.flush().map(|_| ()).map_err(transient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> SledStorage {
        SledStorage::open(dir, u64::MAX, Histogram::new([0.001])).unwrap()
    }

    fn grain(key: &str) -> GrainId {
        GrainId::parse("counter", key).unwrap()
    }

    #[tokio::test]
    async fn commit_is_atomic_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = open(dir.path());
            let mut commit = TurnCommit::new(grain("a"));
            commit.state = Some(StateChange::Write(b"5".to_vec()));
            commit.sends.push(OutboxEntry {
                sender: grain("a"),
                target: grain("b"),
                method: "increment".into(),
                payload: b"1".to_vec(),
            });
            storage.commit(commit).wait().await.unwrap();
        }
        let storage = open(dir.path());
        assert_eq!(
            storage.load_state(&grain("a")).unwrap(),
            Some(b"5".to_vec())
        );
        let pending = storage.pending_sends(None, 10).unwrap();
        assert_eq!(pending.len(), 1);
        let (id, entry) = &pending[0];
        assert_eq!(entry.target, grain("b"));

        let mut receive = TurnCommit::new(grain("b"));
        receive.delivered = Some(*id);
        storage.commit(receive).wait().await.unwrap();
        assert!(storage.was_delivered(&grain("b"), *id).unwrap());
        storage.ack_send(*id, &grain("b")).wait().await.unwrap();
        assert!(storage.pending_sends(None, 10).unwrap().is_empty());
        assert!(!storage.was_delivered(&grain("b"), *id).unwrap());
    }

    #[tokio::test]
    async fn concurrent_commits_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let storage = std::sync::Arc::new(open(dir.path()));
        let waits: Vec<_> = (0..200)
            .map(|i| {
                let mut c = TurnCommit::new(grain(&format!("g{i}")));
                c.state = Some(StateChange::Write(vec![1]));
                storage.commit(c)
            })
            .collect();
        for w in waits {
            w.wait().await.unwrap();
        }
        assert_eq!(storage.load_state(&grain("g199")).unwrap(), Some(vec![1]));
    }

    #[test]
    fn newer_format_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(keys::meta("format"), &99u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let err = SledStorage::open(dir.path(), u64::MAX, Histogram::new([0.1]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("did not write"), "{err}");
        // With a marker, the header inside is checked too.
        format::write(dir.path(), Marker::Ready).unwrap();
        let err = SledStorage::open(dir.path(), u64::MAX, Histogram::new([0.1]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("newer Granary"), "{err}");
    }

    #[tokio::test]
    async fn a_new_store_ignores_the_watermark_of_a_deleted_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let commit_one = |storage: &SledStorage, key: &str| {
            let mut commit = TurnCommit::new(grain(key));
            commit.state = Some(StateChange::Write(vec![1]));
            storage.commit(commit)
        };
        {
            let storage = open(&db);
            for i in 0..5 {
                commit_one(&storage, &format!("g{i}")).wait().await.unwrap();
            }
        }
        // The operator deletes the store and its marker but not the watermark.
        std::fs::remove_dir_all(&db).unwrap();
        std::fs::remove_file(format::path(&db)).unwrap();
        {
            let storage = open(&db);
            commit_one(&storage, "new").wait().await.unwrap();
        }
        let storage = open(&db);
        assert_eq!(storage.load_state(&grain("new")).unwrap(), Some(vec![1]));
    }

    #[test]
    fn only_a_full_disk_is_waited_out() {
        let io = |kind| sled::Error::Io(std::io::Error::from(kind));
        assert!(out_of_space(&io(ErrorKind::StorageFull)));
        assert!(out_of_space(&io(ErrorKind::QuotaExceeded)));
        assert!(!out_of_space(&io(ErrorKind::Other)));
        assert!(!out_of_space(&sled::Error::Unsupported("x".into())));
    }

    #[test]
    fn foreign_database_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(b"someone else's", b"data").unwrap();
            db.flush().unwrap();
        }
        let err = SledStorage::open(dir.path(), u64::MAX, Histogram::new([0.1]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("did not write"), "{err}");
    }
}
