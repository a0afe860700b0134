//! How many activations this process can hold.
//!
//! Every live instance costs a few memory mappings, and Linux stops a process at
//! `vm.max_map_count` (65530 by default) with an mmap failure. The silo reads the limit at
//! start-up and sizes its instance pool and `max_activations` below it, so that a busy silo
//! evicts least-recently-used activations instead of failing.

/// Mappings one live activation adds when its linear memory is initialised from a
/// copy-on-write image: the image is mapped over the start of its pool slot, and the slot
/// splits into accessible and inaccessible parts (measured: 4.00, 2026-11-23).
const MAPPINGS_WITH_IMAGES: u64 = 4;
/// The same when the image is copied in: only the split (measured: 2.00).
const MAPPINGS_WITH_COPIES: u64 = 2;
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
    /// Whether linear memories start from shared copy-on-write images. They save memory
    /// (measured with 5,000 counters: 49.8 KiB proportional set size per activation
    /// against 65.8 KiB with copies, the image's read-only pages being shared) but cost
    /// two more mappings each, so they are used unless `vm.max_map_count` is what limits
    /// the activations; then copies fit about 50 % more.
    pub copy_on_write: bool,
}

impl Capacity {
    pub fn plan(configured: u32) -> Self {
        let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Self::for_limit(configured, max_map_count)
    }

    pub fn for_limit(configured: u32, max_map_count: Option<u64>) -> Self {
        let with_images = allowed_by_maps(max_map_count, MAPPINGS_WITH_IMAGES);
        let (max_activations, copy_on_write) = if configured <= with_images {
            (configured, true)
        } else {
            let with_copies = allowed_by_maps(max_map_count, MAPPINGS_WITH_COPIES);
            (configured.min(with_copies), false)
        };
        let headroom = (max_activations / 16).clamp(16, MAX_HEADROOM as u32);
        Self {
            max_map_count,
            max_activations,
            instances: max_activations.saturating_add(headroom),
            copy_on_write,
        }
    }

    /// Mappings one live activation adds with this plan.
    pub fn mappings_per_activation(&self) -> u64 {
        if self.copy_on_write {
            MAPPINGS_WITH_IMAGES
        } else {
            MAPPINGS_WITH_COPIES
        }
    }

    /// True when `vm.max_map_count`, not the configuration, sets the limit.
    pub fn limited_by_maps(&self, configured: u32) -> bool {
        self.max_activations < configured
    }
}

/// Live activations `max_map_count` allows when each costs `per_activation` mappings:
/// max_map_count >= reserved + per_slot * (live + headroom) + per_activation * live.
fn allowed_by_maps(max_map_count: Option<u64>, per_activation: u64) -> u32 {
    max_map_count
        .map(|m| {
            let budget = m.saturating_sub(RESERVED_MAPPINGS + MAPPINGS_PER_SLOT * MAX_HEADROOM);
            budget / (MAPPINGS_PER_SLOT + per_activation)
        })
        .map(|n| n.clamp(64, u32::MAX as u64) as u32)
        .unwrap_or(u32::MAX)
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

    fn worst_case_mappings(c: &Capacity) -> u64 {
        RESERVED_MAPPINGS
            + MAPPINGS_PER_SLOT * u64::from(c.instances)
            + c.mappings_per_activation() * u64::from(c.max_activations)
    }

    #[test]
    fn default_map_count_lowers_the_limit_and_copies_images_to_fit_more() {
        let c = Capacity::for_limit(100_000, Some(65_530));
        assert!(c.limited_by_maps(100_000));
        assert!(!c.copy_on_write, "{c:?}");
        assert!(c.instances > c.max_activations);
        assert!(worst_case_mappings(&c) <= 65_530, "{c:?}");
        assert!(c.max_activations > 15_000, "{c:?}");
    }

    #[test]
    fn copy_on_write_images_when_the_map_count_is_not_the_limit() {
        for (configured, limit) in [(10_000, 65_530), (100_000, 1 << 20)] {
            let c = Capacity::for_limit(configured, Some(limit));
            assert!(c.copy_on_write, "{c:?}");
            assert_eq!(c.max_activations, configured);
            assert!(worst_case_mappings(&c) <= limit, "{c:?}");
        }
        // Unknown limit (not Linux): nothing to fit, memory first.
        assert!(Capacity::for_limit(100_000, None).copy_on_write);
    }

    #[test]
    fn configured_limit_wins_when_lower() {
        let c = Capacity::for_limit(100, Some(1 << 20));
        assert_eq!(c.max_activations, 100);
        assert_eq!(c.instances, 116);
    }
}
