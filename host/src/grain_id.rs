//! Grain identity: `GrainId {kind, key}` and the validation every name passes before it
//! reaches storage, the filesystem or a log line.

use std::fmt;

/// Longest kind name: `[a-z][a-z0-9-]{0,62}`.
pub const MAX_KIND_LEN: usize = 63;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// A grain's identity: the component's kind and a key within it.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct GrainId {
    pub kind: String,
    pub key: String,
}

/// Why a kind or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid kind {0:?}: must match [a-z][a-z0-9-]{{0,62}}")]
    Kind(String),
    #[error("invalid key: {0}")]
    Key(&'static str),
    #[error("invalid method name: use 1..=128 of [A-Za-z0-9_-]")]
    Method,
}

impl GrainId {
    /// Validates both parts; the only way to build a `GrainId` from outside input.
    pub fn parse(kind: &str, key: &str) -> Result<Self, IdError> {
        validate_kind(kind)?;
        validate_key(key)?;
        Ok(Self {
            kind: kind.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl fmt::Display for GrainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.key)
    }
}

/// Checks a kind name: it becomes a file name (`<kind>.wasm`), so nothing but
/// `[a-z][a-z0-9-]{0,62}` is allowed.
pub fn validate_kind(kind: &str) -> Result<(), IdError> {
    let bytes = kind.as_bytes();
    let valid = matches!(bytes.first(), Some(b'a'..=b'z'))
        && bytes.len() <= MAX_KIND_LEN
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(IdError::Kind(truncate_for_message(kind)))
    }
}

/// Checks a key: 1..=256 bytes of UTF-8 without control characters.
pub fn validate_key(key: &str) -> Result<(), IdError> {
    if key.is_empty() {
        return Err(IdError::Key("must not be empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(IdError::Key("longer than 256 bytes"));
    }
    if key.chars().any(char::is_control) {
        return Err(IdError::Key("contains a control character"));
    }
    Ok(())
}

/// Longest method name, in bytes.
pub const MAX_METHOD_LEN: usize = 128;

/// Checks a method name: 1..=128 of `[A-Za-z0-9_-]`. Applied at the gateway and to the
/// names a grain passes to `call` and `send`.
pub fn validate_method(method: &str) -> Result<(), IdError> {
    let valid = !method.is_empty()
        && method.len() <= MAX_METHOD_LEN
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid { Ok(()) } else { Err(IdError::Method) }
}

/// Echoing a 1 MiB bad name back into an error message would be its own problem.
fn truncate_for_message(s: &str) -> String {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = s[..end].chars().filter(|c| !c.is_control()).collect();
    if end < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        for good in ["counter", "a", "sync-worker", "k9", &"a".repeat(63)] {
            assert!(validate_kind(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Counter",
            "9lives",
            "-x",
            "a/b",
            "..",
            "a\0b",
            "a.wasm",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(validate_kind(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys() {
        for good in ["alice", "ü", "a/b", "../x", " spaced ", &"k".repeat(256)] {
            assert!(validate_key(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a\0b", "line\nbreak", "\u{1b}[31m", &"k".repeat(257)] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_messages_stay_short() {
        let err = validate_kind(&"X".repeat(1024)).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }
}
