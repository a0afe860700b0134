//! The format marker: a small file next to the sled directory (`<dir>.format`) that says
//! which storage format the directory holds and whether it was fully initialized.
//!
//! It is read before sled opens anything, so a directory Granary did not write, or one
//! written by a newer Granary, is refused without a single byte changed (sled rewrites
//! its files when it opens them). And a directory the marker says is initialized must
//! still hold its header record: a damaged log that sled opens as an empty database fails
//! closed instead of being served as a fresh, empty store.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::StorageError;

/// The on-disk format this build writes; bumped on any incompatible change to `keys` or
/// the record encodings.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &str = "granary-storage";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// No marker and no data: a new store.
    Absent,
    /// Initialization started but may not have finished.
    New,
    /// Initialized: the header record must be there.
    Ready,
}

fn fatal(message: String) -> StorageError {
    StorageError::Fatal(message)
}

pub fn path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".format");
    dir.with_file_name(name)
}

/// Reads the marker; refuses foreign and newer directories before anything opens them.
pub fn read(dir: &Path) -> Result<Marker, StorageError> {
    let file = path(dir);
    match std::fs::read_to_string(&file) {
        Ok(text) => parse(&text).map_err(|reason| {
            fatal(format!(
                "{}: {reason}; refusing to open {}",
                file.display(),
                dir.display()
            ))
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // Anything there (a file, or a directory with entries) is not ours to open.
            let empty_dir = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
            if dir.exists() && !empty_dir {
                return Err(fatal(format!(
                    "{} holds data that Granary did not write (no {} marker); refusing to open it, nothing was changed",
                    dir.display(),
                    file.display()
                )));
            }
            Ok(Marker::Absent)
        }
        Err(e) => Err(StorageError::Transient(format!(
            "reading {}: {e}",
            file.display()
        ))),
    }
}

fn parse(text: &str) -> Result<Marker, String> {
    let mut words = text.split_whitespace();
    if words.next() != Some(MAGIC) {
        return Err("not a Granary storage marker".into());
    }
    let version: u32 = words
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or("the marker has no format version")?;
    if version > FORMAT_VERSION {
        return Err(format!(
            "data was written by a newer Granary (format {version}, this build reads up to {FORMAT_VERSION})"
        ));
    }
    match words.next() {
        Some("new") => Ok(Marker::New),
        Some("ready") => Ok(Marker::Ready),
        _ => Err("the marker has no state".into()),
    }
}

/// Writes the marker atomically and durably.
pub fn write(dir: &Path, marker: Marker) -> Result<(), StorageError> {
    let state = match marker {
        Marker::Ready => "ready",
        Marker::New | Marker::Absent => "new",
    };
    let file = path(dir);
    let tmp = file.with_extension("format.tmp");
    let io =
        |e: std::io::Error| StorageError::Transient(format!("writing {}: {e}", file.display()));
    std::fs::write(&tmp, format!("{MAGIC} {FORMAT_VERSION} {state}\n")).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, &file).map_err(io)?;
    if let Some(parent) = file.parent() {
        let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        assert_eq!(parse("granary-storage 1 ready\n"), Ok(Marker::Ready));
        assert_eq!(parse("granary-storage 1 new"), Ok(Marker::New));
        assert!(
            parse("granary-storage 2 ready")
                .unwrap_err()
                .contains("newer Granary")
        );
        assert!(parse("something else").is_err());
        assert!(parse("granary-storage x ready").is_err());
    }

    #[test]
    fn foreign_directories_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        assert_eq!(read(&db).unwrap(), Marker::Absent);
        std::fs::create_dir(&db).unwrap();
        std::fs::write(db.join("conf"), b"someone else's").unwrap();
        let err = read(&db).unwrap_err().to_string();
        assert!(err.contains("did not write"), "{err}");
        assert_eq!(std::fs::read(db.join("conf")).unwrap(), b"someone else's");
    }
}
