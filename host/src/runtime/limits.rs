//! Per-activation resource limits: linear memory, tables and instances. Exceeding the
//! memory limit traps with [`MemoryLimitExceeded`], so the caller is told it was memory
//! (not a bug in general), and the instance is discarded like after any trap.

use wasmtime::ResourceLimiter;

/// Table elements one table may hold (Rust guests use a few hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Core instances, tables and memories in one component instance.
const MAX_INSTANCES: usize = 16;
const MAX_TABLES: usize = 16;
pub const MAX_MEMORIES: usize = 2;

/// The trap raised when a guest asks for more linear memory than its limit.
#[derive(Debug)]
pub struct MemoryLimitExceeded {
    pub limit: usize,
    pub desired: usize,
}

impl std::fmt::Display for MemoryLimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory limit exceeded: the grain asked for {} bytes, its limit is {}",
            self.desired, self.limit
        )
    }
}

impl std::error::Error for MemoryLimitExceeded {}

pub struct GrainLimits {
    memory_limit: usize,
}

impl GrainLimits {
    pub fn new(memory_limit: usize) -> Self {
        Self { memory_limit }
    }
}

impl ResourceLimiter for GrainLimits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                limit: self.memory_limit,
                desired,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}
