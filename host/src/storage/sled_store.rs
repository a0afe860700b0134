//! The embedded sled engine with group commit.
//!
//! One committer thread applies batches in arrival order and then flushes once for all of
//! them; every turn whose batch was applied before the flush began is acknowledged by it.
//! sled only fsyncs on its own timer, so nothing is acknowledged before `flush` returns.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;

use super::{
    DueReminder, Durable, MessageId, OutboxEntry, StateChange, Storage, StorageError, TurnCommit,
    keys,
};
use crate::grain_id::GrainId;
use crate::reminders::{ReminderAdvance, ReminderChange, ReminderRecord};

/// The on-disk format this build writes; bumped on any incompatible change to `keys` or
/// the record encodings.
pub const FORMAT_VERSION: u32 = 1;

/// Most batches folded into one flush, so a flood of commits still gets regular acks.
const MAX_GROUP: usize = 4096;

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

pub struct SledStorage {
    db: sled::Db,
    /// Feeds the committer thread; `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    /// Joined on drop, so the database is closed (its lock released) when the storage is.
    committer: Option<std::thread::JoinHandle<()>>,
    /// Stored reminders; written by the committer, persisted with each batch changing it.
    reminder_count: Arc<AtomicU64>,
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
    /// Opens (or creates) the database under `dir`, checking the format header.
    pub fn open(dir: &Path, flush_seconds: Histogram) -> Result<Self, StorageError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| open_error(dir, e))?;
        check_format(&db)?;
        let count = read_count(&db)?;
        let reminder_count = Arc::new(AtomicU64::new(count));
        let (jobs, rx) = mpsc::channel();
        let committer = Committer {
            db: db.clone(),
            count: reminder_count.clone(),
            flush_seconds,
        };
        let committer = std::thread::Builder::new()
            .name("granary-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| StorageError::Fatal(format!("starting the commit thread: {e}")))?;
        Ok(Self {
            db,
            jobs: Some(jobs),
            committer: Some(committer),
            reminder_count,
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

fn open_error(dir: &Path, e: sled::Error) -> StorageError {
    let text = e.to_string();
    if text.contains("lock") || text.contains("WouldBlock") {
        StorageError::Transient(format!(
            "{} is locked by another process (is a previous silo still running?): {text}",
            dir.display()
        ))
    } else {
        StorageError::Fatal(format!("cannot open database in {}: {text}", dir.display()))
    }
}

/// A new database gets the header; one without a header but with data is foreign, and one
/// with a newer header was written by a newer Granary: both fail closed, data untouched.
fn check_format(db: &sled::Db) -> Result<(), StorageError> {
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

fn read_count(db: &sled::Db) -> Result<u64, StorageError> {
    let value = db
        .get(keys::meta("reminders"))
        .map_err(|e| StorageError::Fatal(e.to_string()))?;
    Ok(value
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

struct Committer {
    db: sled::Db,
    count: Arc<AtomicU64>,
    flush_seconds: Histogram,
}

impl Committer {
    fn run(self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let applied: Vec<_> = group
                .iter_mut()
                .map(|job| self.apply(&mut job.work))
                .collect();
            let started = Instant::now();
            let flushed = self.db.flush();
            self.flush_seconds.observe(started.elapsed().as_secs_f64());
            for (job, applied) in group.into_iter().zip(applied) {
                let result = match (applied, &flushed) {
                    (Ok(()), Ok(_)) => Ok(()),
                    (Err(e), _) => Err(e),
                    (_, Err(e)) => Err(transient(e)),
                };
                let _ = job.done.send(result);
            }
        }
        let _ = self.db.flush();
    }

    fn apply(&self, work: &mut Work) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        let before = self.count.load(Ordering::Relaxed);
        let mut count = before;
        match work {
            Work::Turn(commit) => self.turn(&mut batch, commit, &mut count)?,
            Work::Ack(id, receiver) => {
                batch.remove(keys::outbox(*id));
                batch.remove(keys::delivered(receiver, *id));
            }
            Work::Advance(grain, advance) => self.advance(&mut batch, grain, advance)?,
            Work::DropIndex(due) => {
                let current = self.load_reminder(&due.grain, &due.name)?;
                if current.is_none_or(|r| r.next_due_ms != due.due_ms) {
                    batch.remove(keys::reminder_index(due.due_ms, &due.grain, &due.name));
                }
            }
        }
        if count != before {
            batch.insert(keys::meta("reminders"), &count.to_be_bytes());
        }
        self.db.apply_batch(batch).map_err(transient)?;
        self.count.store(count, Ordering::Relaxed);
        Ok(())
    }

    fn turn(
        &self,
        batch: &mut sled::Batch,
        commit: &mut TurnCommit,
        count: &mut u64,
    ) -> Result<(), StorageError> {
        let grain = &commit.grain;
        match commit.state.take() {
            Some(StateChange::Write(bytes)) => batch.insert(keys::state(grain), bytes),
            Some(StateChange::Clear) => batch.remove(keys::state(grain)),
            None => {}
        }
        for entry in &commit.sends {
            // generate_id is monotonic across restarts, so ids never repeat.
            let id = self.db.generate_id().map_err(transient)?;
            batch.insert(keys::outbox(id), encode(entry)?);
        }
        if let Some(id) = commit.delivered {
            batch.insert(keys::delivered(grain, id), &[][..]);
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
            self.advance(batch, grain, advance)?;
        }
        for change in &commit.reminders {
            let name = match change {
                ReminderChange::Put(r) => &r.name,
                ReminderChange::Delete(n) => n,
            };
            let old = self.load_reminder(grain, name)?;
            if let Some(old) = &old {
                batch.remove(keys::reminder_index(old.next_due_ms, grain, name));
            }
            match change {
                ReminderChange::Put(record) => {
                    batch.insert(keys::reminder(grain, name), encode(record)?);
                    batch.insert(
                        keys::reminder_index(record.next_due_ms, grain, name),
                        &[][..],
                    );
                    if old.is_none() {
                        *count += 1;
                    }
                }
                ReminderChange::Delete(_) => {
                    if old.is_some() {
                        batch.remove(keys::reminder(grain, name));
                        *count = count.saturating_sub(1);
                    }
                }
            }
        }
        Ok(())
    }

    fn advance(
        &self,
        batch: &mut sled::Batch,
        grain: &GrainId,
        advance: &ReminderAdvance,
    ) -> Result<(), StorageError> {
        let Some(mut record) = self.load_reminder(grain, &advance.name)? else {
            return Ok(());
        };
        if record.next_due_ms != advance.expected_due_ms {
            return Ok(());
        }
        batch.remove(keys::reminder_index(
            record.next_due_ms,
            grain,
            &record.name,
        ));
        record.next_due_ms = advance.next_due_ms;
        record.record(advance.outcome.clone());
        batch.insert(keys::reminder(grain, &record.name), encode(&record)?);
        batch.insert(
            keys::reminder_index(record.next_due_ms, grain, &record.name),
            &[][..],
        );
        Ok(())
    }

    fn load_reminder(
        &self,
        grain: &GrainId,
        name: &str,
    ) -> Result<Option<ReminderRecord>, StorageError> {
        load_reminder(&self.db, grain, name)
    }
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
        let value = self.db.get(keys::state(grain)).map_err(transient)?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn commit(&self, commit: TurnCommit) -> Durable {
        self.submit(Work::Turn(commit))
    }

    fn was_delivered(&self, receiver: &GrainId, id: MessageId) -> Result<bool, StorageError> {
        self.db
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
        for item in self.db.range(start..).take(limit) {
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
        self.db.contains_key(keys::outbox(id)).map_err(transient)
    }

    fn ack_send(&self, id: MessageId, receiver: &GrainId) -> Durable {
        self.submit(Work::Ack(id, receiver.clone()))
    }

    fn load_reminder(
        &self,
        grain: &GrainId,
        name: &str,
    ) -> Result<Option<ReminderRecord>, StorageError> {
        load_reminder(&self.db, grain, name)
    }

    fn reminders_of(&self, grain: &GrainId) -> Result<Vec<ReminderRecord>, StorageError> {
        self.db
            .scan_prefix(keys::reminders_of(grain))
            .map(|item| decode(&item.map_err(transient)?.1))
            .collect()
    }

    fn due_reminders(&self, until_ms: u64, limit: usize) -> Result<Vec<DueReminder>, StorageError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(keys::reminder_index_prefix()) {
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

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush().map(|_| ()).map_err(transient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> SledStorage {
        SledStorage::open(dir, Histogram::new([0.001])).unwrap()
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
        let err = SledStorage::open(dir.path(), Histogram::new([0.1]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("newer Granary"), "{err}");
    }

    #[test]
    fn foreign_database_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(b"someone else's", b"data").unwrap();
            db.flush().unwrap();
        }
        let err = SledStorage::open(dir.path(), Histogram::new([0.1]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("did not write"), "{err}");
    }
}
