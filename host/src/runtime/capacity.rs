//! How many activations this process can hold.
//!
//! Every live instance costs a few memory mappings, and Linux stops a process at
//! `vm.max_map_count` (65530 by default) with an mmap failure. The silo reads the limit at
//! start-up and sizes `max_activations` below it, so that a busy silo evicts
//! least-recently-used activations instead of failing; when the limit is what bounds the
//! activations, linear memories come from one reserved region (`arena`) instead of the
//! pool, which roughly triples how many fit.

/// Mappings one live activation adds in the pool when its linear memory is initialised
/// from a copy-on-write image: the image is mapped over the start of its pool slot, and
/// the slot splits into accessible and inaccessible parts (measured: 4.00, 2026-11-23).
const MAPPINGS_WITH_IMAGES: u64 = 4;
/// Mappings each pool slot costs from start-up: its fiber stack and guard page (a
/// `Store` keeps its stack between calls, so there is one per slot).
const MAPPINGS_PER_SLOT: u64 = 2;
/// Mappings one activation costs with arena memories: its fiber stack and guard page,
/// mapped at its first call and unmapped with it; the memory itself adds none.
const MAPPINGS_IN_ARENA: u64 = 2;
/// Most headroom slots (for activations still deactivating).
const MAX_HEADROOM: u64 = 1024;
/// Mappings the rest of the process needs (code, heap, threads, sled), with a margin
/// (measured: about 150 at start-up).
const RESERVED_MAPPINGS: u64 = 2048;

/// Where linear memories and fiber stacks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// The pooling allocator, memories initialised from shared copy-on-write images: the
    /// least memory per activation (measured with 5,000 counters: 49.8 KiB proportional
    /// set size against 65.8 KiB with copied images), at 6 mappings each.
    Pooled,
    /// Memories from one reserved region (`arena`), images copied in, stacks mapped per
    /// activation: 2 mappings each, for when `vm.max_map_count` limits the activations.
    Arena,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// `vm.max_map_count` as read at start-up (None when unreadable).
    pub max_map_count: Option<u64>,
    /// Live activations the silo allows.
    pub max_activations: u32,
    /// Instances: activations plus room for those still deactivating.
    pub instances: u32,
    pub allocation: Allocation,
}

impl Capacity {
    pub fn plan(configured: u32) -> Self {
        let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Self::for_limit(configured, max_map_count)
    }

    /// Memory first: pooled, unless the map count is what limits the activations.
    pub fn for_limit(configured: u32, max_map_count: Option<u64>) -> Self {
        let pooled = Self::pooled(configured, max_map_count);
        if pooled.max_activations == configured {
            return pooled;
        }
        let budget = max_map_count.map_or(u64::MAX, |m| m.saturating_sub(RESERVED_MAPPINGS));
        let instances = (budget / MAPPINGS_IN_ARENA).min(u32::MAX as u64) as u32;
        let max_activations = configured.min(instances.saturating_sub(headroom(instances)).max(64));
        Self {
            max_map_count,
            max_activations,
            instances: max_activations + headroom(max_activations),
            allocation: Allocation::Arena,
        }
    }

    /// The pooled plan, also the fallback when the arena cannot be reserved.
    pub fn pooled(configured: u32, max_map_count: Option<u64>) -> Self {
        let allowed = max_map_count
            .map(|m| {
                let budget = m.saturating_sub(RESERVED_MAPPINGS + MAPPINGS_PER_SLOT * MAX_HEADROOM);
                budget / (MAPPINGS_PER_SLOT + MAPPINGS_WITH_IMAGES)
            })
            .map(|n| n.clamp(64, u32::MAX as u64) as u32)
            .unwrap_or(u32::MAX);
        let max_activations = configured.min(allowed);
        Self {
            max_map_count,
            max_activations,
            instances: max_activations.saturating_add(headroom(max_activations)),
            allocation: Allocation::Pooled,
        }
    }

    /// True when `vm.max_map_count`, not the configuration, sets the limit.
    pub fn limited_by_maps(&self, configured: u32) -> bool {
        self.max_activations < configured
    }
}

/// Room for activations still deactivating.
fn headroom(activations: u32) -> u32 {
    (activations / 16).clamp(16, MAX_HEADROOM as u32)
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
        let instances = u64::from(c.instances);
        RESERVED_MAPPINGS
            + match c.allocation {
                Allocation::Pooled => {
                    MAPPINGS_PER_SLOT * instances
                        + MAPPINGS_WITH_IMAGES * u64::from(c.max_activations)
                }
                Allocation::Arena => MAPPINGS_IN_ARENA * instances,
            }
    }

    #[test]
    fn default_map_count_takes_memories_from_the_arena_to_fit_more() {
        let c = Capacity::for_limit(100_000, Some(65_530));
        assert!(c.limited_by_maps(100_000));
        assert_eq!(c.allocation, Allocation::Arena, "{c:?}");
        assert!(c.instances > c.max_activations);
        assert!(worst_case_mappings(&c) <= 65_530, "{c:?}");
        assert!(c.max_activations >= 30_000, "{c:?}");
    }

    #[test]
    fn pooled_with_images_when_the_map_count_is_not_the_limit() {
        for (configured, limit) in [(10_000, 65_530), (100_000, 1 << 20)] {
            let c = Capacity::for_limit(configured, Some(limit));
            assert_eq!(c.allocation, Allocation::Pooled, "{c:?}");
            assert_eq!(c.max_activations, configured);
            assert!(worst_case_mappings(&c) <= limit, "{c:?}");
        }
        // Unknown limit (not Linux): nothing to fit, memory first.
        assert_eq!(
            Capacity::for_limit(100_000, None).allocation,
            Allocation::Pooled
        );
    }

    #[test]
    fn the_pooled_fallback_stays_under_the_map_count() {
        let c = Capacity::pooled(100_000, Some(65_530));
        assert!(worst_case_mappings(&c) <= 65_530, "{c:?}");
        assert!(c.max_activations > 9_000, "{c:?}");
    }

    #[test]
    fn configured_limit_wins_when_lower() {
        let c = Capacity::for_limit(100, Some(1 << 20));
        assert_eq!(c.max_activations, 100);
        assert_eq!(c.instances, 116);
    }
}
