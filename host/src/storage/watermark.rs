//! The commit watermark: a file beside the database (`<dir>.watermark`) holding the
//! sequence number of the last group commit sled acknowledged as flushed.
//!
//! Every group batch carries its sequence number into sled (the `commits` meta record). When
//! part of sled's log is damaged, sled recovers the records before the damage and opens
//! without an error: the store would silently lose the grains written last. The watermark
//! is written only after a flush returned, so a recovered sequence below it proves that
//! flushed commits are missing, and the store is refused.
//!
//! The file is overwritten in place without an fsync: after a power cut it may lag, which
//! only narrows what the check can see; it is never ahead of what sled made durable.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::StorageError;

/// Sequence plus its complement, so a torn write is recognised rather than misread.
const LEN: usize = 16;

pub fn path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".watermark");
    dir.with_file_name(name)
}

fn encode(seq: u64) -> [u8; LEN] {
    let mut bytes = [0; LEN];
    bytes[..8].copy_from_slice(&seq.to_be_bytes());
    bytes[8..].copy_from_slice(&(!seq).to_be_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Option<u64> {
    let seq = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let check = u64::from_be_bytes(bytes.get(8..LEN)?.try_into().ok()?);
    (check == !seq).then_some(seq)
}

/// The last flushed sequence on record; `None` when there is no file or it is unreadable
/// (a torn write after a power cut), which leaves nothing to compare against.
pub fn read(dir: &Path) -> Result<Option<u64>, StorageError> {
    let file = path(dir);
    match std::fs::read(&file) {
        // Created empty when the store opened; nothing was flushed since.
        Ok(bytes) if bytes.is_empty() => Ok(None),
        Ok(bytes) => {
            let seq = decode(&bytes);
            if seq.is_none() {
                tracing::warn!(
                    file = %file.display(),
                    "the commit watermark is unreadable (torn by a power cut?); opening without checking for lost commits"
                );
            }
            Ok(seq)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::Transient(format!(
            "reading {}: {e}",
            file.display()
        ))),
    }
}

/// Forgets the watermark of a store that no longer exists: a new store starts counting
/// from zero, and a stale watermark beside it would refuse it as damaged.
pub fn reset(dir: &Path) -> Result<(), StorageError> {
    let file = path(dir);
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(StorageError::Transient(format!(
            "removing {}: {e}",
            file.display()
        ))),
        _ => Ok(()),
    }
}

/// Compares what sled recovered with what it had acknowledged.
pub fn check(dir: &Path, recovered: u64, flushed: Option<u64>) -> Result<(), StorageError> {
    match flushed {
        Some(flushed) if flushed > recovered => Err(StorageError::Fatal(format!(
            "the database is damaged: it recovered {recovered} group commits, but {flushed} had been \
             flushed (see {}); sled dropped the records after the damage, so serving it would \
             silently lose the grains written last. Restore it from a backup (if you restored an \
             older backup on purpose, delete the watermark file to accept it)",
            path(dir).display()
        ))),
        _ => Ok(()),
    }
}

/// Records flushed sequences; owned by the committer thread.
pub struct Watermark {
    file: File,
    path: PathBuf,
    failed: bool,
}

impl Watermark {
    pub fn create(dir: &Path) -> Result<Self, StorageError> {
        let path = path(dir);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StorageError::Fatal(format!("opening {}: {e}", path.display())))?;
        Ok(Self {
            file,
            path,
            failed: false,
        })
    }

    /// Called after a flush returned. A failed write only weakens the next start's check,
    /// so it is logged once rather than failing the commit that already succeeded.
    pub fn record(&mut self, seq: u64) {
        if let Err(e) = self.file.write_all_at(&encode(seq), 0)
            && !self.failed
        {
            self.failed = true;
            tracing::warn!(file = %self.path.display(), error = %e, "cannot update the commit watermark");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_writes() {
        assert_eq!(decode(&encode(0)), Some(0));
        assert_eq!(decode(&encode(u64::MAX - 3)), Some(u64::MAX - 3));
        let mut torn = encode(0x1_0000);
        torn[8..].copy_from_slice(&encode(0xffff)[8..]);
        assert_eq!(decode(&torn), None);
        assert_eq!(decode(b"short"), None);
    }

    #[test]
    fn recorded_sequence_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        assert_eq!(read(&db).unwrap(), None);
        let mut w = Watermark::create(&db).unwrap();
        w.record(41);
        w.record(42);
        assert_eq!(read(&db).unwrap(), Some(42));
        assert!(check(&db, 42, Some(42)).is_ok());
        assert!(check(&db, 50, Some(42)).is_ok());
        let err = check(&db, 30, Some(42)).unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains("30"), "{err}");
    }
}
