//! The copy of a store taken before sled opens it.
//!
//! sled's recovery writes while it opens: it shreds the log after the last record it can
//! read and writes a new snapshot. For a torn tail after a crash that is right; for a log
//! damaged in the middle it destroys what an operator or a recovery tool needed. So the
//! store is copied to `<dir>.opening` first; a store that is then refused is put back
//! exactly as it was found, and an accepted one drops the copy.
//!
//! The copy is not fsynced: it protects against refusing, not against power cuts. A start
//! that finds a copy left by an interrupted open keeps the database and drops the copy,
//! unless the database itself is missing (the interruption came mid-restore).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::StorageError;

pub struct OpenCopy {
    dir: PathBuf,
    copy: PathBuf,
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let context = format!("{what} {}", path.display());
    move |e| StorageError::Transient(format!("{context}: {e}"))
}

impl OpenCopy {
    /// Copies `dir` unless it holds more than `max_bytes`; `None` when it was not copied.
    pub fn take(dir: &Path, max_bytes: u64) -> Result<Option<Self>, StorageError> {
        let copy = sibling(dir, ".opening");
        let partial = sibling(dir, ".opening.partial");
        remove_if_present(&partial)?;
        if !dir.exists() {
            return Ok(None);
        }
        let size = dir_size(dir).map_err(io("measuring", dir))?;
        if size > max_bytes {
            tracing::info!(
                store_mib = size >> 20,
                max_mib = max_bytes >> 20,
                "opening the store without a copy (larger than open_copy_max_mib): a store refused as damaged may already be rewritten by sled's recovery"
            );
            return Ok(None);
        }
        let started = Instant::now();
        // A disk too full for the copy must not keep the silo from starting.
        if let Err(e) = copy_dir(dir, &partial).and_then(|()| std::fs::rename(&partial, &copy)) {
            tracing::warn!(error = %e, copy = %partial.display(), "cannot copy the store before opening it; opening it without a copy");
            remove_if_present(&partial)?;
            return Ok(None);
        }
        tracing::info!(
            mib = size >> 20,
            ms = started.elapsed().as_millis() as u64,
            "copied the store aside while it is opened and checked"
        );
        Ok(Some(Self {
            dir: dir.to_owned(),
            copy,
        }))
    }

    /// The store was accepted: the copy is no longer needed.
    pub fn discard(self) -> Result<(), StorageError> {
        std::fs::remove_dir_all(&self.copy).map_err(io("removing", &self.copy))
    }

    /// The store was refused: put its files back as they were found. The database must be
    /// closed; sled's threads may still write to the files moved aside, not to the copy.
    pub fn restore(self) -> Result<(), StorageError> {
        let refused = sibling(&self.dir, ".refused");
        remove_if_present(&refused)?;
        if self.dir.exists() {
            std::fs::rename(&self.dir, &refused).map_err(io("moving aside", &self.dir))?;
        }
        std::fs::rename(&self.copy, &self.dir).map_err(io("restoring", &self.dir))?;
        remove_if_present(&refused)
    }

    /// Settles what an interrupted open left behind, before anything else looks at `dir`.
    pub fn recover(dir: &Path) -> Result<(), StorageError> {
        let copy = sibling(dir, ".opening");
        remove_if_present(&sibling(dir, ".opening.partial"))?;
        remove_if_present(&sibling(dir, ".refused"))?;
        if !copy.exists() {
            return Ok(());
        }
        if dir.exists() {
            tracing::warn!(copy = %copy.display(), "removing the copy left by an interrupted start");
            remove_if_present(&copy)
        } else {
            tracing::warn!(copy = %copy.display(), "finishing a restore interrupted at the last start");
            std::fs::rename(&copy, dir).map_err(io("restoring", dir))
        }
    }
}

fn remove_if_present(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", path)(e)),
        _ => Ok(()),
    }
}

fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Plain files and directories only: that is all sled writes.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(root: &Path) -> PathBuf {
        let dir = root.join("db");
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        std::fs::write(dir.join("db"), b"log").unwrap();
        std::fs::write(dir.join("blobs/1"), b"blob").unwrap();
        dir
    }

    #[test]
    fn a_refused_store_is_put_back_and_an_accepted_one_drops_the_copy() {
        let root = tempfile::tempdir().unwrap();
        let dir = store(root.path());
        let copy = OpenCopy::take(&dir, u64::MAX).unwrap().unwrap();
        std::fs::write(dir.join("db"), b"shredded").unwrap();
        std::fs::write(dir.join("snap.1"), b"new").unwrap();
        copy.restore().unwrap();
        assert_eq!(std::fs::read(dir.join("db")).unwrap(), b"log");
        assert_eq!(std::fs::read(dir.join("blobs/1")).unwrap(), b"blob");
        assert!(!dir.join("snap.1").exists());

        OpenCopy::take(&dir, u64::MAX)
            .unwrap()
            .unwrap()
            .discard()
            .unwrap();
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["db"]);
    }

    #[test]
    fn a_store_that_cannot_be_copied_opens_without_a_copy() {
        let root = tempfile::tempdir().unwrap();
        let dir = store(root.path());
        // A socket cannot be copied: the copy fails part-way, as on a full disk.
        let _socket = std::os::unix::net::UnixListener::bind(dir.join("sock")).unwrap();
        assert!(OpenCopy::take(&dir, u64::MAX).unwrap().is_none());
        assert!(!root.path().join("db.opening.partial").exists());
        assert!(!root.path().join("db.opening").exists());
        assert_eq!(std::fs::read(dir.join("db")).unwrap(), b"log");
    }

    #[test]
    fn large_stores_are_not_copied() {
        let root = tempfile::tempdir().unwrap();
        let dir = store(root.path());
        assert!(OpenCopy::take(&dir, 3).unwrap().is_none());
        assert!(!root.path().join("db.opening").exists());
    }

    #[test]
    fn an_interrupted_start_is_settled() {
        let root = tempfile::tempdir().unwrap();
        let dir = store(root.path());
        // Interrupted before the store was verified: the database is kept.
        OpenCopy::take(&dir, u64::MAX).unwrap().unwrap();
        std::fs::write(dir.join("db"), b"recovered").unwrap();
        OpenCopy::recover(&dir).unwrap();
        assert_eq!(std::fs::read(dir.join("db")).unwrap(), b"recovered");
        assert!(!root.path().join("db.opening").exists());
        // Interrupted mid-restore: the copy is all there is.
        OpenCopy::take(&dir, u64::MAX).unwrap().unwrap();
        std::fs::rename(&dir, root.path().join("db.refused")).unwrap();
        OpenCopy::recover(&dir).unwrap();
        assert_eq!(std::fs::read(dir.join("db")).unwrap(), b"recovered");
        assert!(!root.path().join("db.refused").exists());
    }
}
