//! The on-disk key layout. One keyspace, a one-byte prefix per record type, so that a
//! turn's records of every type fit in one atomic batch.
//!
//! Kinds and keys never contain NUL (validated in `grain_id`), so NUL separates them.

use crate::grain_id::GrainId;

use super::MessageId;

const STATE: u8 = b's';
const OUTBOX: u8 = b'o';
const DELIVERED: u8 = b'd';
const META: u8 = b'm';
const REMINDER: u8 = b'r';
const REMINDER_INDEX: u8 = b'i';

/// `m` + name: format header and other silo-wide records.
pub fn meta(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

/// `s` + kind + NUL + key.
pub fn state(grain: &GrainId) -> Vec<u8> {
    let mut k = vec![STATE];
    push_grain(&mut k, grain);
    k
}

/// `o` + big-endian id, so a scan returns messages oldest first.
pub fn outbox(id: MessageId) -> Vec<u8> {
    let mut k = vec![OUTBOX];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn outbox_prefix() -> Vec<u8> {
    vec![OUTBOX]
}

pub fn outbox_id(key: &[u8]) -> Option<MessageId> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(MessageId::from_be_bytes(bytes))
}

/// `d` + kind + NUL + key + NUL + big-endian id.
pub fn delivered(receiver: &GrainId, id: MessageId) -> Vec<u8> {
    let mut k = vec![DELIVERED];
    push_grain(&mut k, receiver);
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `r` + kind + NUL + key + NUL + name.
pub fn reminder(grain: &GrainId, name: &str) -> Vec<u8> {
    let mut k = reminders_of(grain);
    k.extend_from_slice(name.as_bytes());
    k
}

/// The prefix of every reminder of `grain`.
pub fn reminders_of(grain: &GrainId) -> Vec<u8> {
    let mut k = vec![REMINDER];
    push_grain(&mut k, grain);
    k.push(0);
    k
}

/// `i` + big-endian due time + kind + NUL + key + NUL + name: a scan from `i` returns
/// reminders earliest first.
pub fn reminder_index(due_ms: u64, grain: &GrainId, name: &str) -> Vec<u8> {
    let mut k = vec![REMINDER_INDEX];
    k.extend_from_slice(&due_ms.to_be_bytes());
    push_grain(&mut k, grain);
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn reminder_index_prefix() -> Vec<u8> {
    vec![REMINDER_INDEX]
}

/// Decodes an index key into (due, grain, name); `None` for a malformed key.
pub fn parse_reminder_index(key: &[u8]) -> Option<(u64, GrainId, String)> {
    let due = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
    let rest = std::str::from_utf8(key.get(9..)?).ok()?;
    let mut parts = rest.splitn(3, '\0');
    let (kind, key, name) = (parts.next()?, parts.next()?, parts.next()?);
    let grain = GrainId::parse(kind, key).ok()?;
    Some((due, grain, name.to_owned()))
}

fn push_grain(k: &mut Vec<u8>, grain: &GrainId) {
    k.extend_from_slice(grain.kind.as_bytes());
    k.push(0);
    k.extend_from_slice(grain.key.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_layout() {
        let g = GrainId::parse("counter", "alice").unwrap();
        assert_eq!(state(&g), b"scounter\0alice");
        assert_eq!(outbox(258), b"o\0\0\0\0\0\0\x01\x02");
        assert_eq!(outbox_id(&outbox(258)), Some(258));
        assert_eq!(delivered(&g, 1), b"dcounter\0alice\0\0\0\0\0\0\0\0\x01");
        assert_eq!(meta("format"), b"mformat");
        assert_eq!(reminder(&g, "tick"), b"rcounter\0alice\0tick");
        let index = reminder_index(258, &g, "tick");
        assert_eq!(index, b"i\0\0\0\0\0\0\x01\x02counter\0alice\0tick");
        assert_eq!(parse_reminder_index(&index), Some((258, g, "tick".into())));
    }

    #[test]
    fn keys_of_different_grains_never_collide() {
        let a = GrainId::parse("ab", "c").unwrap();
        let b = GrainId::parse("a", "bc").unwrap();
        assert_ne!(state(&a), state(&b));
    }
}
