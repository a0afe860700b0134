//! The wasmtime side of the silo: one `Engine` (component model, async, epoch
//! interruption; pooled instances or arena memories, as the capacity plan says), the
//! `Linker` with WASI and the grain host interfaces, the kinds loaded from the grains
//! directory, and the per-activation store data.
//!
//! Errors: wasmtime's own `Result` is a trap or a host bug; what the guest sees is the
//! inner WIT result. `?` turns wasmtime errors into `anyhow` for plumbing.

mod arena;
pub mod bindings;
mod cache;
mod capacity;
pub mod host;
mod kinds;
pub mod limits;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::error::Context as _;
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use capacity::{Allocation, Capacity, out_of_memory};
pub use host::{GrainHost, Turn};
pub use kinds::{GrainKind, KindError, Kinds};

use crate::config::Config;

/// How often the epoch advances: the granularity of deadlines and of yielding a busy
/// guest back to tokio.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Native stack for wasm frames and host calls of one turn. Rust guests keep their own
/// (shadow) stack in linear memory, so this stays small.
const ASYNC_STACK_SIZE: usize = 512 << 10;
const MAX_WASM_STACK: usize = 256 << 10;

pub struct Runtime {
    pub engine: Engine,
    pub linker: Linker<GrainHost>,
    pub capacity: Capacity,
    /// Stops the epoch thread when the runtime is dropped.
    ticking: Arc<AtomicBool>,
}

impl Runtime {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let mut capacity = Capacity::plan(config.max_activations);
        let mut engine_config = engine_config(config, &capacity);
        if capacity.allocation == Allocation::Arena {
            let slots = capacity.instances as usize * limits::MAX_MEMORIES;
            match arena::MemoryArena::reserve(slots, memory_max(config)) {
                Ok(arena) => {
                    engine_config.with_host_memory(Arc::new(arena));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reserve address space for the memory arena; pooled instances instead, fewer of them");
                    capacity = Capacity::pooled(config.max_activations, capacity.max_map_count);
                    engine_config = self::engine_config(config, &capacity);
                }
            }
        }
        let engine = Engine::new(&engine_config).context("creating engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).context("linking WASI")?;
        bindings::Grain::add_to_linker::<_, HasSelf<_>>(&mut linker, |host| host)
            .context("linking the grain interfaces")?;
        let ticking = Arc::new(AtomicBool::new(true));
        spawn_epoch_ticker(engine.clone(), ticking.clone());
        Ok(Self {
            engine,
            linker,
            capacity,
            ticking,
        })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

fn engine_config(config: &Config, capacity: &Capacity) -> wasmtime::Config {
    let mut c = wasmtime::Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    // Measured: the concurrency machinery makes plain component calls 2-5x slower.
    c.concurrency_support(false);
    c.async_stack_size(ASYNC_STACK_SIZE);
    c.max_wasm_stack(MAX_WASM_STACK);
    c.memory_reservation_for_growth(0);
    match capacity.allocation {
        Allocation::Pooled => pooled(&mut c, memory_max(config), capacity.instances),
        Allocation::Arena => {
            // Arena memories (set by the caller) are slices of one read-write mapping:
            // no reservation and no guard region, so compiled code checks each access
            // against the memory's length; images are copied in.
            c.memory_reservation(0);
            c.memory_guard_size(0);
            c.memory_init_cow(false);
            c.allocation_strategy(InstanceAllocationStrategy::OnDemand);
        }
    }
    c
}

fn pooled(c: &mut wasmtime::Config, memory_max: usize, slots: u32) {
    c.memory_init_cow(true);
    // A small reservation per memory (instead of 4 GiB) lets 100k slots fit in the address
    // space; the price is explicit bounds checks.
    c.memory_reservation(memory_max as u64);
    c.memory_guard_size(64 << 10);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_memories(slots)
        .total_tables(slots * 2)
        .total_core_instances(slots * 4)
        .max_core_instances_per_component(16)
        .max_memories_per_component(2)
        .max_tables_per_component(4)
        .max_memory_size(memory_max)
        // A Store keeps its fiber stack between calls: one per instance slot.
        .total_stacks(slots)
        .linear_memory_keep_resident(0);
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
}

/// The largest memory limit of any kind: the size of a memory slot.
fn memory_max(config: &Config) -> usize {
    config
        .kinds
        .values()
        .filter_map(|k| k.memory_limit_bytes)
        .fold(config.memory_limit_bytes, usize::max)
}

fn spawn_epoch_ticker(engine: Engine, ticking: Arc<AtomicBool>) {
    let weak = engine.weak();
    drop(engine);
    std::thread::Builder::new()
        .name("granary-epoch".into())
        .spawn(move || {
            while ticking.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        // Spawning a thread fails only when the process is out of resources at start-up.
        .expect("spawning the epoch thread");
}
