//! How many activations this process can hold.
//!
//! Every live instance costs a few memory mappings, and Linux stops a process at
//! `vm.max_map_count` (65530 by default) with an mmap failure. The silo reads the limit at
//! start-up and sizes its instance pool and `max_activations` below it, so that a busy silo
//! evicts least-recently-used activations instead of failing.

/// Mappings one live activation adds: its linear memory slot splits the pool's reservation
/// into an accessible and an inaccessible part (measured: 2.00 per activation, 2026-11-23).
/// Copy-on-write memory images would map the image over each slot too: 4.00.
pub const MAPPINGS_PER_ACTIVATION: u64 = 2;
/// Mappings each instance slot costs from start-up: its fiber stack and guard page (a
/// `Store` keeps its stack between calls, so there is one per slot).
pub const MAPPINGS_PER_SLOT: u64 = 2;
/// Most headroom slots (for activations still deactivating).
const MAX_HEADROOM: u64 = 1024;
/// Mappings the rest of the process needs (code, heap, threads, sled), with a margin
/// (measured: about 150 at start-up).
const RESERVED_MAPPINGS: u64 = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// `vm.max_map_count` as read at start-up (None when unreadable).
    pub max_map_count: Option<u64>,
    /// Live activations the silo allows.
    pub max_activations: u32,
    /// Pool slots: activations plus room for those still deactivating.
    pub instances: u32,
}

impl Capacity {
    pub fn plan(configured: u32) -> Self {
        let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Self::for_limit(configured, max_map_count)
    }

    pub fn for_limit(configured: u32, max_map_count: Option<u64>) -> Self {
        // max_map_count >= reserved + per_slot * (live + headroom) + per_activation * live
        let by_maps = max_map_count
            .map(|m| {
                let budget = m.saturating_sub(RESERVED_MAPPINGS + MAPPINGS_PER_SLOT * MAX_HEADROOM);
                budget / (MAPPINGS_PER_SLOT + MAPPINGS_PER_ACTIVATION)
            })
            .map(|n| n.clamp(64, u32::MAX as u64) as u32)
            .unwrap_or(u32::MAX);
        let max_activations = configured.min(by_maps);
        let headroom = (max_activations / 16).clamp(16, MAX_HEADROOM as u32);
        Self {
            max_map_count,
            max_activations,
            instances: max_activations.saturating_add(headroom),
        }
    }

    /// True when `vm.max_map_count`, not the configuration, sets the limit.
    pub fn limited_by_maps(&self, configured: u32) -> bool {
        self.max_activations < configured
    }
}

/// Whether `e` is the kernel refusing memory (ENOMEM): out of memory, or out of mappings
/// because `vm.max_map_count` was lowered below what the silo planned at start-up. A
/// resource error, not a fault of the grain or its component.
pub fn out_of_memory(e: &wasmtime::Error) -> bool {
    // wasmtime reports mmap failures as rustix errors; their text is the OS error's.
    e.chain()
        .any(|cause| cause.to_string().contains("(os error 12)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enomem_is_recognised_through_context() {
        let enomem = wasmtime::Error::new(std::io::Error::from_raw_os_error(12))
            .context("mmap failed to allocate 0x94000 bytes");
        assert!(out_of_memory(&enomem));
        let other = wasmtime::Error::new(std::io::Error::from_raw_os_error(22)).context("mmap");
        assert!(!out_of_memory(&other));
        assert!(!out_of_memory(&wasmtime::Error::msg("trap: unreachable")));
    }

    #[test]
    fn default_map_count_lowers_the_limit_and_stays_under_it() {
        let c = Capacity::for_limit(100_000, Some(65_530));
        assert!(c.limited_by_maps(100_000));
        assert!(c.instances > c.max_activations);
        let worst = RESERVED_MAPPINGS
            + MAPPINGS_PER_SLOT * u64::from(c.instances)
            + MAPPINGS_PER_ACTIVATION * u64::from(c.max_activations);
        assert!(worst <= 65_530, "{worst}");
        assert!(c.max_activations > 10_000, "{c:?}");
    }

    #[test]
    fn configured_limit_wins_when_lower() {
        let c = Capacity::for_limit(100, Some(1 << 20));
        assert_eq!(c.max_activations, 100);
        assert_eq!(c.instances, 116);
    }
}
