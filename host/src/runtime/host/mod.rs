//! The per-activation store data ([`GrainHost`]) and the grain world's imports, one file
//! per WIT interface. Everything a turn stages lives in [`Turn`] until the activation
//! commits or discards it.

mod calls;
mod context;
mod output;
mod reminders;
mod state;
mod timers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::grain_id::GrainId;
use crate::message::CallChain;
use crate::reminders::ReminderChange;
use crate::silo::Silo;
use crate::storage::{OutboxEntry, StateChange};
use crate::timers::{GrainTimers, TimerChange};

pub use context::now_ms;
pub use output::{GuestOutput, LogBudget};

use crate::runtime::limits::GrainLimits;

/// The data of one activation's `Store`.
pub struct GrainHost {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: GrainLimits,
    /// Shared by `log` and guest stdout/stderr: a grain cannot flood the silo log.
    pub log_budget: LogBudget,
    pub id: GrainId,
    pub silo: Arc<Silo>,
    pub turn: Turn,
    /// The instance's timers: they live and die with it.
    pub timers: GrainTimers,
}

/// What the running turn has staged, and the context it runs in.
pub struct Turn {
    pub state: Option<StateChange>,
    pub sends: Vec<OutboxEntry>,
    pub timers: Vec<TimerChange>,
    /// At most one change per reminder name: the last one staged wins.
    pub reminders: BTreeMap<String, ReminderChange>,
    pub chain: CallChain,
    pub deadline: Instant,
}

impl Turn {
    pub fn new(chain: CallChain, deadline: Instant) -> Self {
        Self {
            state: None,
            sends: Vec::new(),
            timers: Vec::new(),
            reminders: BTreeMap::new(),
            chain,
            deadline,
        }
    }
}

impl GrainHost {
    /// WASI with no preopened directories, no environment, no arguments, no network and
    /// no inherited stdio: stdout and stderr lines go to the silo log, tagged with `id`.
    pub fn new(silo: Arc<Silo>, id: GrainId, memory_limit: usize) -> Self {
        let log_budget = LogBudget::new(silo.metrics.guest_log_dropped.clone());
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestOutput::new(id.clone(), "stdout", log_budget.clone()))
            .stderr(GuestOutput::new(id.clone(), "stderr", log_budget.clone()))
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits: GrainLimits::new(memory_limit),
            log_budget,
            id,
            silo,
            turn: Turn::new(CallChain::default(), Instant::now()),
            timers: GrainTimers::default(),
        }
    }
}

impl WasiView for GrainHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl crate::runtime::bindings::types::Host for GrainHost {}
