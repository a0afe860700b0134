//! `probe`: a test grain that misbehaves on request, for the host's integration tests.
//!
//! It fails after writing, traps, loops forever, holds a turn for a while, allocates, calls
//! itself, records each deactivation in its state, and tries to escape its sandbox (files,
//! environment, network, stack, state and payload caps, log floods). Not an example to copy.
//!
//! ```text
//! cargo xtask build
//! cargo xtask demo
//! granary call probe/a set 5                   # 5
//! granary call probe/a fail_after_write 9      # 422 "failed on purpose"; get still says 5
//! granary call probe/a state                   # {"value":5,"deactivations":0,...}
//! ```
//!
//! (`granary call counter/alice increment 5` calls the `counter` example the same way.)
//! The component is `target/wasm32-wasip2/guest/probe.wasm`.

use std::hint::black_box;
use std::time::Duration;

use granary_sdk::{Ctx, DeactivationReason, GrainId, ReminderTick, grain};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The probe's state.
///
/// Serialized as `{"value":..,"deactivations":..,"last_deactivation":..}`; the tick counters
/// appear only once a timer or reminder has fired.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Probe {
    value: u64,
    deactivations: u64,
    last_deactivation: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    timer_ticks: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    reminder_ticks: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_reminder: Option<String>,
    /// Scheduled time of the last reminder tick applied.
    #[serde(default, skip_serializing_if = "is_zero")]
    last_reminder_scheduled_ms: u64,
    /// Ticks whose scheduled time was not after the last applied one: an effect applied
    /// twice. Exactly-once delivery keeps this at zero.
    #[serde(default, skip_serializing_if = "is_zero")]
    reminder_doubled: u64,
    /// Period of the reminder started by `start_reminder`, to check tick continuity.
    #[serde(default, skip_serializing_if = "is_zero")]
    reminder_period_ms: u64,
    /// The scheduled time the next tick must carry (0 before the first tick).
    #[serde(default, skip_serializing_if = "is_zero")]
    reminder_expected_ms: u64,
    /// Ticks that skipped periods without reporting them as missed: a lost tick.
    #[serde(default, skip_serializing_if = "is_zero")]
    reminder_gaps: u64,
    /// Wall-clock time of the last timer tick.
    #[serde(default, skip_serializing_if = "is_zero")]
    last_timer_ms: u64,
    /// What `on_deactivate` does: "" (record it), "hang" (loop forever) or "trap".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    on_deactivate: String,
    /// Ballast set by `write_state_mib`, to push the state past the silo's cap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ballast: Vec<u8>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The argument of `send_to`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendArgs {
    /// The receiving probe's key.
    pub key: String,
    /// The value to `set` there.
    pub value: u64,
}

/// The argument of `set_slowly`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SlowSetArgs {
    /// The value to set.
    pub value: u64,
    /// Milliseconds to busy-wait before setting it.
    pub ms: u64,
}

/// The argument of `start_timer` and `start_reminder`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScheduleArgs {
    /// The timer's or reminder's name.
    pub name: String,
    /// Milliseconds to the first tick.
    pub due_ms: u64,
    /// Milliseconds between ticks (0: a timer fires once).
    pub period_ms: u64,
}

fn probe(key: impl Into<String>) -> GrainId {
    GrainId::new("probe", key)
}

/// `kib` KiB of text.
fn big_text(kib: u64) -> String {
    "x".repeat(
        usize::try_from(kib)
            .unwrap_or(usize::MAX / 2048)
            .saturating_mul(1024),
    )
}

/// Not a tail call: the addition after the call keeps every frame alive.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == 0 {
        return 0;
    }
    black_box(recurse(depth - 1)).wrapping_add(depth)
}

#[grain]
impl Probe {
    /// Sets the value and returns it.
    pub fn set(&mut self, value: u64) -> u64 {
        self.value = value;
        self.value
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.value
    }

    /// The whole state.
    pub fn state(&self) -> &Probe {
        self
    }

    /// Sets the value, then fails: the write must not be committed.
    pub fn fail_after_write(&mut self, value: u64) -> Result<(), String> {
        self.value = value;
        Err("failed on purpose".into())
    }

    /// Panics, which traps the instance.
    pub fn trap(&self) {
        panic!("probe trapped on purpose");
    }

    /// Sets the value, then panics: the value must not be committed, and the trapped
    /// instance (whose memory holds it) must never serve again.
    pub fn set_then_trap(&mut self, value: u64) {
        self.value = value;
        panic!("probe trapped after a write on purpose");
    }

    /// Loops forever without looking at `cancelled()`: only the host's deadline stops it.
    pub fn spin(&self) {
        let mut n = 0u64;
        loop {
            n = black_box(n.wrapping_add(1));
        }
    }

    /// Loops until the silo cancels the turn; returns the iterations.
    pub fn spin_until_cancelled(&self, ctx: &mut Ctx) -> u64 {
        let mut n = 0u64;
        while !ctx.cancelled() {
            n = black_box(n + 1);
        }
        n
    }

    /// Busy-waits `ms` milliseconds of wall-clock time (holds the turn); returns the
    /// milliseconds actually waited.
    pub fn sleep_ms(&self, ctx: &mut Ctx, ms: u64) -> u64 {
        let start = ctx.now_ms();
        loop {
            let elapsed = ctx.now_ms().saturating_sub(start);
            if elapsed >= ms {
                return elapsed;
            }
            black_box(elapsed);
        }
    }

    /// Busy-waits `ms` milliseconds, then sets the value: a write turn that takes a while.
    pub fn set_slowly(&mut self, ctx: &mut Ctx, args: SlowSetArgs) -> u64 {
        self.sleep_ms(ctx, args.ms);
        self.value = args.value;
        self.value
    }

    /// Allocates `mib` MiB, touches every byte, and returns the length in bytes.
    pub fn alloc_mib(&self, mib: u64) -> Result<u64, String> {
        let len = usize::try_from(mib)
            .ok()
            .and_then(|mib| mib.checked_mul(1 << 20))
            .ok_or_else(|| format!("{mib} MiB does not fit in memory"))?;
        let block = black_box(vec![0xa5u8; len]);
        Ok(block.len() as u64)
    }

    /// Replies with the payload.
    pub fn echo(&self, value: Value) -> Value {
        value
    }

    /// Calls its own `get`: the silo must refuse with a cycle error, returned as the `Err`.
    pub fn call_self(&self, ctx: &mut Ctx) -> Result<u64, String> {
        let me = ctx.self_id();
        ctx.call(&me, "get", &()).map_err(|e| e.to_string())
    }

    /// Sends `set 7` to `probe/<key>` and then fails: the send must never be delivered.
    pub fn send_then_fail(&self, ctx: &mut Ctx, key: String) -> Result<(), String> {
        ctx.send(&probe(key), "set", &7u64)
            .map_err(|e| e.to_string())?;
        Err("failed after sending on purpose".into())
    }

    /// Sends `set value` to `probe/<key>`.
    pub fn send_to(&mut self, ctx: &mut Ctx, args: SendArgs) -> Result<(), String> {
        ctx.send(&probe(args.key), "set", &args.value)
            .map_err(|e| e.to_string())
    }

    /// Logs `n` lines through the silo's log and `n` lines on stdout; returns `n`.
    pub fn log_lines(&self, ctx: &mut Ctx, n: u64) -> u64 {
        for i in 0..n {
            ctx.info(format!("probe log line {i}"));
            println!("probe stdout line {i}");
        }
        n
    }

    /// Clears the stored state.
    pub fn clear(&mut self, ctx: &mut Ctx) {
        ctx.clear_state();
    }

    /// Registers a volatile timer; each tick increments `timer_ticks`.
    pub fn start_timer(&mut self, ctx: &mut Ctx, args: ScheduleArgs) -> Result<(), String> {
        let due = Duration::from_millis(args.due_ms);
        ctx.register_timer(&args.name, due, Duration::from_millis(args.period_ms))
    }

    /// Cancels a timer.
    pub fn stop_timer(&mut self, ctx: &mut Ctx, name: String) {
        ctx.cancel_timer(&name);
    }

    /// Registers a durable reminder; each tick increments `reminder_ticks`.
    pub fn start_reminder(&mut self, ctx: &mut Ctx, args: ScheduleArgs) -> Result<(), String> {
        self.reminder_period_ms = args.period_ms;
        self.reminder_expected_ms = 0;
        let due = Duration::from_millis(args.due_ms);
        ctx.register_reminder(&args.name, due, Duration::from_millis(args.period_ms))
    }

    /// Sets the value, then loops forever ignoring `cancelled()`: the drain must interrupt
    /// it, and the value must not be committed.
    pub fn set_then_spin(&mut self, value: u64) {
        self.value = value;
        let mut n: u64 = 0;
        loop {
            n = black_box(n.wrapping_add(1));
        }
    }

    /// Chooses what `on_deactivate` does: "" (record it), "hang" or "trap".
    pub fn set_on_deactivate(&mut self, behaviour: String) -> Result<(), String> {
        if !matches!(behaviour.as_str(), "" | "hang" | "trap") {
            return Err(format!("unknown behaviour {behaviour:?}"));
        }
        self.on_deactivate = behaviour;
        Ok(())
    }

    /// Registers a reminder, then fails: the registration must not be persisted.
    pub fn reminder_then_fail(&mut self, ctx: &mut Ctx, args: ScheduleArgs) -> Result<(), String> {
        self.start_reminder(ctx, args)?;
        Err("failed after registering a reminder".into())
    }

    /// Cancels a reminder.
    pub fn stop_reminder(&mut self, ctx: &mut Ctx, name: String) {
        ctx.cancel_reminder(&name);
    }

    /// The names of the registered reminders.
    pub fn reminders(&self, ctx: &mut Ctx) -> Vec<String> {
        ctx.reminders().into_iter().map(|r| r.name).collect()
    }

    /// Reads a host file through WASI: the sandbox has no preopened directories, so this
    /// must fail.
    pub fn read_file(&self, path: String) -> Result<String, String> {
        std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))
    }

    /// Tries to create (and write) a file: must fail in the sandbox.
    pub fn write_file(&self, path: String) -> Result<(), String> {
        std::fs::write(&path, b"written by a grain").map_err(|e| format!("{path}: {e}"))
    }

    /// The environment the grain sees: must be empty.
    pub fn env(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }

    /// Opens a TCP connection to `addr` (`host:port`): the sandbox has no network.
    pub fn connect(&self, addr: String) -> Result<(), String> {
        std::net::TcpStream::connect(&addr)
            .map(drop)
            .map_err(|e| format!("{addr}: {e}"))
    }

    /// Recurses `depth` levels without tail calls; a large depth overflows the wasm stack.
    pub fn recurse(&self, depth: u64) -> u64 {
        recurse(black_box(depth))
    }

    /// Stores `mib` MiB of ballast in the state; the write exceeds the state cap, so the
    /// turn fails and nothing is committed.
    pub fn write_state_mib(&mut self, mib: u64) -> Result<u64, String> {
        let len = usize::try_from(mib)
            .ok()
            .and_then(|mib| mib.checked_mul(1 << 20))
            .ok_or_else(|| format!("{mib} MiB does not fit in memory"))?;
        self.ballast = vec![0; len];
        self.value += 1;
        Ok(len as u64)
    }

    /// Sends `echo` with a payload of `kib` KiB to `probe/<own key>-peer`.
    pub fn send_big(&mut self, ctx: &mut Ctx, kib: u64) -> Result<(), String> {
        let target = probe(format!("{}-peer", ctx.self_id().key));
        ctx.send(&target, "echo", &big_text(kib))
            .map_err(|e| e.to_string())
    }

    /// Calls `echo` with a payload of `kib` KiB on `probe/<own key>-peer`; returns the
    /// reply's length.
    pub fn call_big(&self, ctx: &mut Ctx, kib: u64) -> Result<u64, String> {
        let target = probe(format!("{}-peer", ctx.self_id().key));
        let reply: String = ctx
            .call(&target, "echo", &big_text(kib))
            .map_err(|e| e.to_string())?;
        Ok(reply.len() as u64)
    }

    /// Replies with `kib` KiB of text.
    pub fn big_reply(&self, kib: u64) -> String {
        big_text(kib)
    }

    /// Sends to `probe/<own key>-peer` with a method name of `kib` KiB.
    pub fn send_long_method(&mut self, ctx: &mut Ctx, kib: u64) -> Result<(), String> {
        let target = probe(format!("{}-peer", ctx.self_id().key));
        ctx.send(&target, &big_text(kib), &())
            .map_err(|e| e.to_string())
    }

    /// Calls `probe/<own key>-peer` with a method name of `kib` KiB.
    pub fn call_long_method(&self, ctx: &mut Ctx, kib: u64) -> Result<(), String> {
        let target = probe(format!("{}-peer", ctx.self_id().key));
        ctx.call::<Value>(&target, &big_text(kib), &())
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Logs `n` lines through `log` and `n` on stdout, each with a terminal escape
    /// sequence; returns `n`.
    pub fn log_flood(&self, ctx: &mut Ctx, n: u64) -> u64 {
        for i in 0..n {
            ctx.info(format!("flood \u{1b}[31mred\u{1b}[0m log line {i}"));
            println!("flood \u{1b}[31mred\u{1b}[0m stdout line {i}");
        }
        n
    }

    fn on_deactivate(&mut self, reason: DeactivationReason) {
        match self.on_deactivate.as_str() {
            "hang" => {
                let mut n: u64 = 0;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            "trap" => panic!("on_deactivate traps on purpose"),
            _ => {}
        }
        self.deactivations += 1;
        self.last_deactivation = Some(format!("{reason:?}"));
    }

    fn on_timer(&mut self, ctx: &mut Ctx, _name: &str) {
        self.timer_ticks += 1;
        self.last_timer_ms = ctx.now_ms();
    }

    fn on_reminder(&mut self, _name: &str, tick: ReminderTick) {
        self.reminder_ticks += 1;
        if tick.scheduled_ms <= self.last_reminder_scheduled_ms {
            self.reminder_doubled += 1;
        } else if self.reminder_expected_ms != 0 && tick.scheduled_ms != self.reminder_expected_ms {
            self.reminder_gaps += 1;
        }
        // Under the fire-once policy the next tick is scheduled one period after the
        // missed ones this tick reported.
        self.reminder_expected_ms =
            tick.scheduled_ms + (1 + u64::from(tick.missed)) * self.reminder_period_ms;
        self.last_reminder_scheduled_ms = tick.scheduled_ms;
        self.last_reminder = Some(tick.idempotency_key);
    }
}
