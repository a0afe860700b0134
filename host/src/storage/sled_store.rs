//! The embedded sled engine with group commit.
//!
//! One committer thread applies batches in arrival order and then flushes once for all of
//! them; every turn whose batch was applied before the flush began is acknowledged by it.
//! sled only fsyncs on its own timer, so nothing is acknowledged before `flush` returns.

use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;

use super::{
    Durable, MessageId, OutboxEntry, StateChange, Storage, StorageError, TurnCommit, keys,
};
use crate::grain_id::GrainId;

/// The on-disk format this build writes; bumped on any incompatible change to `keys` or
/// the record encodings.
pub const FORMAT_VERSION: u32 = 1;

/// Most batches folded into one flush, so a flood of commits still gets regular acks.
const MAX_GROUP: usize = 4096;

struct Job {
    batch: sled::Batch,
    done: tokio::sync::oneshot::Sender<Result<(), StorageError>>,
}

pub struct SledStorage {
    db: sled::Db,
    /// Feeds the committer thread; `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    /// Joined on drop, so the database is closed (its lock released) when the storage is.
    committer: Option<std::thread::JoinHandle<()>>,
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
        let (jobs, rx) = mpsc::channel();
        let committer_db = db.clone();
        let committer = std::thread::Builder::new()
            .name("granary-commit".into())
            .spawn(move || run_committer(committer_db, rx, flush_seconds))
            .map_err(|e| StorageError::Fatal(format!("starting the commit thread: {e}")))?;
        Ok(Self {
            db,
            jobs: Some(jobs),
            committer: Some(committer),
        })
    }

    fn submit(&self, batch: sled::Batch) -> Durable {
        let (done, durable) = Durable::pair();
        // A send error means the committer is gone; `Durable::wait` reports that.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job { batch, done });
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

fn run_committer(db: sled::Db, rx: mpsc::Receiver<Job>, flush_seconds: Histogram) {
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
            .map(|job| db.apply_batch(std::mem::take(&mut job.batch)))
            .collect();
        let started = Instant::now();
        let flushed = db.flush();
        flush_seconds.observe(started.elapsed().as_secs_f64());
        for (job, applied) in group.into_iter().zip(applied) {
            let result = match (&applied, &flushed) {
                (Ok(()), Ok(_)) => Ok(()),
                (Err(e), _) | (_, Err(e)) => Err(StorageError::Transient(e.to_string())),
            };
            let _ = job.done.send(result);
        }
    }
    let _ = db.flush();
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
        match self.build_batch(commit) {
            Ok(batch) => self.submit(batch),
            Err(e) => {
                let (done, durable) = Durable::pair();
                let _ = done.send(Err(e));
                durable
            }
        }
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
            let entry = postcard::from_bytes(&value)
                .map_err(|e| StorageError::Fatal(format!("corrupt outbox record {id}: {e}")))?;
            out.push((id, entry));
        }
        Ok(out)
    }

    fn is_pending(&self, id: MessageId) -> Result<bool, StorageError> {
        self.db.contains_key(keys::outbox(id)).map_err(transient)
    }

    fn ack_send(&self, id: MessageId, receiver: &GrainId) -> Durable {
        let mut batch = sled::Batch::default();
        batch.remove(keys::outbox(id));
        batch.remove(keys::delivered(receiver, id));
        self.submit(batch)
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush().map(|_| ()).map_err(transient)
    }
}

impl SledStorage {
    fn build_batch(&self, commit: TurnCommit) -> Result<sled::Batch, StorageError> {
        let mut batch = sled::Batch::default();
        match commit.state {
            Some(StateChange::Write(bytes)) => batch.insert(keys::state(&commit.grain), bytes),
            Some(StateChange::Clear) => batch.remove(keys::state(&commit.grain)),
            None => {}
        }
        for entry in &commit.sends {
            // generate_id is monotonic across restarts, so ids never repeat.
            let id = self.db.generate_id().map_err(transient)?;
            let bytes = postcard::to_stdvec(entry)
                .map_err(|e| StorageError::Fatal(format!("encoding a send: {e}")))?;
            batch.insert(keys::outbox(id), bytes);
        }
        if let Some(id) = commit.delivered {
            batch.insert(keys::delivered(&commit.grain, id), &[][..]);
        }
        Ok(batch)
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
