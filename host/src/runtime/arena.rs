//! Linear memories carved out of one reserved region, for a silo whose live activations
//! are limited by `vm.max_map_count`.
//!
//! The pooling allocator gives each live memory its own protection boundaries: the
//! accessible part and the inaccessible rest of its slot are two mappings, four with a
//! copy-on-write image. Here every memory is a slice of a single read-write mapping, so a
//! memory adds no mapping at all and an activation costs only its fiber stack and guard
//! page. Nothing relies on inaccessible pages: the engine is configured with no
//! reservation and no guard region (`memory_reservation(0)`, `memory_guard_size(0)`), so
//! compiled code checks every access against the memory's current length. A freed
//! memory's pages are given back to the kernel, which also zeroes them for the next one.

use std::sync::{Arc, Mutex};

use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// Slots and released ranges are multiples of the wasm page, so they stay aligned to the
/// host's pages whether those are 4, 16 or 64 KiB.
const ALIGN: usize = 64 << 10;

/// The reserved region and its free slots; shared by the memories cut from it.
pub struct MemoryArena {
    inner: Arc<Region>,
}

struct Region {
    /// Start of the mapping; never unmapped (the engine, and every memory, may use it
    /// until the process exits).
    base: usize,
    slot_size: usize,
    free: Mutex<Vec<usize>>,
}

impl MemoryArena {
    /// Reserves `slots` memories of `slot_size` bytes each (address space only: pages
    /// become resident when a guest touches them).
    pub fn reserve(slots: usize, slot_size: usize) -> std::io::Result<Self> {
        let slot_size = slot_size.max(1).div_ceil(ALIGN) * ALIGN;
        let len = slots
            .checked_mul(slot_size)
            .ok_or_else(|| std::io::Error::other("arena size overflows"))?;
        let base = map_region(len)?;
        Ok(Self {
            inner: Arc::new(Region {
                base,
                slot_size,
                free: Mutex::new((0..slots).rev().collect()),
            }),
        })
    }
}

// SAFETY: every memory handed out is a distinct, page-aligned, zeroed slice of a live
// read-write mapping that is never unmapped; its base never moves, and it never grows
// past its slot. `memory_reservation(0)` and `memory_guard_size(0)` mean the engine asks
// for no reservation or guard pages (checked below), so no access relies on a fault.
unsafe impl MemoryCreator for MemoryArena {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        _maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        if reserved_size_in_bytes.is_some_and(|r| r > 0) || guard_size_in_bytes > 0 {
            return Err("the memory arena needs an engine without reservations or guards".into());
        }
        if minimum > self.inner.slot_size {
            return Err(format!(
                "a memory of {minimum} bytes exceeds the arena's {} byte slots",
                self.inner.slot_size
            ));
        }
        let slot = self
            .inner
            .lock_free()
            .pop()
            .ok_or("every memory slot of the arena is in use")?;
        Ok(Box::new(ArenaMemory {
            region: self.inner.clone(),
            slot,
            size: minimum,
        }))
    }
}

impl Region {
    fn lock_free(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        // Nothing panics while holding the free list; recover it regardless.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot_ptr(&self, slot: usize) -> *mut u8 {
        (self.base + slot * self.slot_size) as *mut u8
    }
}

struct ArenaMemory {
    region: Arc<Region>,
    slot: usize,
    /// Wasm memories only grow: this is also what to give back when the memory is freed.
    size: usize,
}

// SAFETY: the slice at `as_ptr()` of `byte_capacity()` bytes belongs to this memory alone
// until it is dropped, and stays mapped read-write.
unsafe impl LinearMemory for ArenaMemory {
    fn byte_size(&self) -> usize {
        self.size
    }

    fn byte_capacity(&self) -> usize {
        self.region.slot_size
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size > self.region.slot_size {
            wasmtime::bail!(
                "a memory of {new_size} bytes exceeds the arena's {} byte slots",
                self.region.slot_size
            );
        }
        self.size = new_size;
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.region.slot_ptr(self.slot)
    }
}

impl Drop for ArenaMemory {
    fn drop(&mut self) {
        if release_pages(self.as_ptr(), self.size.div_ceil(ALIGN) * ALIGN).is_ok() {
            self.region.lock_free().push(self.slot);
        } else {
            // A slot whose pages could not be zeroed must never serve another grain.
            tracing::error!(
                slot = self.slot,
                "could not release a linear memory's pages; its slot is retired"
            );
        }
    }
}

#[cfg(target_os = "linux")]
fn map_region(len: usize) -> std::io::Result<usize> {
    use rustix::mm::{Advice, MapFlags, ProtFlags, madvise, mmap_anonymous};
    // SAFETY: a fresh anonymous mapping at an address the kernel chooses; nothing else
    // refers to it. NORESERVE: address space, not memory, is what is reserved here.
    let base = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )?
    };
    // Transparent huge pages would make a touched 4 KiB page cost 2 MiB.
    // SAFETY: advice on the mapping just made.
    unsafe { madvise(base, len, Advice::LinuxNoHugepage)? };
    Ok(base as usize)
}

#[cfg(target_os = "linux")]
fn release_pages(ptr: *mut u8, len: usize) -> std::io::Result<()> {
    // SAFETY: the range is this memory's own part of the arena, no longer used by any
    // instance; MADV_DONTNEED drops its pages, which read as zero afterwards.
    unsafe { rustix::mm::madvise(ptr.cast(), len, rustix::mm::Advice::LinuxDontNeed)? };
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn map_region(_len: usize) -> std::io::Result<usize> {
    Err(std::io::Error::other(
        "the memory arena is only built for Linux",
    ))
}

#[cfg(not(target_os = "linux"))]
fn release_pages(_ptr: *mut u8, _len: usize) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "the memory arena is only built for Linux",
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn memory(arena: &MemoryArena, bytes: usize) -> Result<Box<dyn LinearMemory>, String> {
        arena.new_memory(MemoryType::new(1, None), bytes, None, None, 0)
    }

    #[test]
    fn a_freed_memory_comes_back_zeroed_to_the_next_one() {
        let arena = MemoryArena::reserve(1, 2 * ALIGN).unwrap();
        let mut first = memory(&arena, ALIGN).unwrap();
        first.grow_to(2 * ALIGN).unwrap();
        // SAFETY: both bytes are inside the memory's current size.
        unsafe {
            first.as_ptr().write(0xa5);
            first.as_ptr().add(2 * ALIGN - 1).write(0x5a);
        }
        let base = first.as_ptr();
        assert!(memory(&arena, ALIGN).is_err(), "the only slot is in use");
        drop(first);
        let second = memory(&arena, ALIGN).unwrap();
        assert_eq!(second.as_ptr(), base, "the slot was reused");
        // SAFETY: the slot stays mapped; its pages were released, so they read as zero.
        unsafe {
            assert_eq!(second.as_ptr().read(), 0);
            assert_eq!(second.as_ptr().add(2 * ALIGN - 1).read(), 0);
        }
    }

    #[test]
    fn memories_never_grow_past_their_slot() {
        let arena = MemoryArena::reserve(2, ALIGN).unwrap();
        let mut memory = memory(&arena, ALIGN).unwrap();
        assert_eq!(memory.byte_capacity(), ALIGN);
        assert!(memory.grow_to(2 * ALIGN).is_err());
        assert_eq!(memory.byte_size(), ALIGN);
        let too_big = arena.new_memory(MemoryType::new(2, None), 2 * ALIGN, None, None, 0);
        assert!(too_big.is_err());
        let guarded = arena.new_memory(MemoryType::new(1, None), ALIGN, None, None, ALIGN);
        assert!(
            guarded.is_err(),
            "an engine expecting guard pages is refused"
        );
    }
}
