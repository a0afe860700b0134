//! Dispatch tests: real `#[grain]` expansions driven through the runtime with a fake host.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::Host;
use crate::runtime::{self, GrainError};
use crate::{
    CallError, Ctx, DeactivationReason, GrainId, LogLevel, MissedPolicy, ReminderInfo,
    ReminderTick, Schedule, grain,
};

/// Everything the grain asked of the fake host, and the fake's canned answers.
#[derive(Default)]
struct Record {
    writes: Vec<String>,
    clears: usize,
    calls: Vec<(GrainId, String, String)>,
    sends: Vec<(GrainId, String, String)>,
    logs: Vec<(LogLevel, String)>,
    timers: Vec<(String, u64, u64)>,
    cancelled_timers: Vec<String>,
    reminders: Vec<(String, Schedule, MissedPolicy)>,
    cancelled_reminders: Vec<String>,
    call_reply: Option<Result<Vec<u8>, CallError>>,
    write_error: Option<String>,
    cancelled: bool,
}

#[derive(Clone, Default)]
struct Fake(Rc<RefCell<Record>>);

impl Fake {
    fn host(&self) -> Box<dyn Host> {
        Box::new(self.clone())
    }

    fn writes(&self) -> Vec<String> {
        self.0.borrow().writes.clone()
    }
}

impl Host for Fake {
    fn state_write(&self, bytes: &[u8]) -> Result<(), String> {
        let mut record = self.0.borrow_mut();
        if let Some(error) = record.write_error.clone() {
            return Err(error);
        }
        record
            .writes
            .push(String::from_utf8(bytes.to_vec()).unwrap());
        Ok(())
    }

    fn state_clear(&self) {
        self.0.borrow_mut().clears += 1;
    }

    fn timer_register(&self, name: &str, due_ms: u64, period_ms: u64) -> Result<(), String> {
        let mut record = self.0.borrow_mut();
        record.timers.push((name.to_owned(), due_ms, period_ms));
        Ok(())
    }

    fn timer_cancel(&self, name: &str) {
        self.0.borrow_mut().cancelled_timers.push(name.to_owned());
    }

    fn reminder_register(
        &self,
        name: &str,
        schedule: &Schedule,
        missed: MissedPolicy,
    ) -> Result<(), String> {
        let mut record = self.0.borrow_mut();
        record
            .reminders
            .push((name.to_owned(), schedule.clone(), missed));
        Ok(())
    }

    fn reminder_cancel(&self, name: &str) {
        self.0
            .borrow_mut()
            .cancelled_reminders
            .push(name.to_owned());
    }

    fn reminder_list(&self) -> Vec<ReminderInfo> {
        let record = self.0.borrow();
        let list = record
            .reminders
            .iter()
            .map(|(name, schedule, missed)| ReminderInfo {
                name: name.clone(),
                schedule: schedule.clone(),
                missed: *missed,
                next_due_ms: 0,
            });
        list.collect()
    }

    fn call(&self, target: &GrainId, method: &str, payload: &[u8]) -> Result<Vec<u8>, CallError> {
        let mut record = self.0.borrow_mut();
        let payload = String::from_utf8(payload.to_vec()).unwrap();
        record
            .calls
            .push((target.clone(), method.to_owned(), payload));
        record.call_reply.clone().unwrap_or(Ok(b"null".to_vec()))
    }

    fn send(&self, target: &GrainId, method: &str, payload: &[u8]) -> Result<(), CallError> {
        let mut record = self.0.borrow_mut();
        let payload = String::from_utf8(payload.to_vec()).unwrap();
        record
            .sends
            .push((target.clone(), method.to_owned(), payload));
        Ok(())
    }

    fn self_id(&self) -> GrainId {
        GrainId::new("counter", "alice")
    }

    fn now_ms(&self) -> u64 {
        1_700_000_000_000
    }

    fn cancelled(&self) -> bool {
        self.0.borrow().cancelled
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.0.borrow_mut().logs.push((level, message.to_owned()));
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Counter {
    value: u64,
    #[serde(default)]
    events: Vec<String>,
}

#[derive(Deserialize)]
struct AskArgs {
    key: String,
}

#[grain]
impl Counter {
    pub fn increment(&mut self, by: Option<u64>) -> u64 {
        self.value += by.unwrap_or(1);
        self.value
    }

    pub fn get(&self) -> u64 {
        self.value
    }

    /// Sets the value, then refuses 13 (after changing the in-memory state).
    pub fn set(&mut self, value: u64) -> Result<u64, String> {
        self.value = value;
        if value == 13 {
            return Err(format!("{value} is unlucky"));
        }
        Ok(value)
    }

    pub fn nothing(&mut self) {}

    pub fn wipe(&mut self, ctx: &mut Ctx) -> u64 {
        self.value = 99;
        ctx.clear_state();
        0
    }

    pub fn ask(&self, args: AskArgs, ctx: &mut Ctx) -> Result<u64, CallError> {
        ctx.call(&GrainId::new("counter", args.key), "get", &())
    }

    pub fn tell(&mut self, ctx: &mut Ctx, key: String) -> Result<(), CallError> {
        ctx.send(&GrainId::new("counter", key), "increment", &self.value)
    }

    pub fn whoami(&self, ctx: &mut Ctx) -> String {
        ctx.self_id().to_string()
    }

    pub fn schedule(&mut self, ctx: &mut Ctx) -> Result<usize, String> {
        ctx.register_timer("t", Duration::from_millis(5), Duration::ZERO)?;
        ctx.register_reminder("r", Duration::from_secs(1), Duration::from_secs(2))?;
        ctx.register_reminder_cron("c", "0 * * * * *")?;
        ctx.register_reminder_with(
            "w",
            Schedule::Every {
                due: Duration::ZERO,
                period: Duration::from_secs(3),
            },
            MissedPolicy::CatchUp(4),
        )?;
        ctx.cancel_timer("t");
        ctx.cancel_reminder("r");
        Ok(ctx.reminders().len())
    }

    #[allow(dead_code)]
    fn helper(&self) -> u64 {
        self.value
    }

    #[allow(dead_code)]
    pub(crate) fn crate_helper(&self) -> u64 {
        self.value
    }

    fn on_activate(&mut self, ctx: &mut Ctx) -> Result<(), String> {
        if self.value == 666 {
            return Err("refusing to activate".into());
        }
        ctx.info("activated");
        self.events.push("activate".into());
        Ok(())
    }

    fn on_deactivate(&mut self, reason: DeactivationReason) {
        self.events.push(format!("deactivate {reason:?}"));
    }

    fn on_timer(&self, ctx: &mut Ctx, name: &str) {
        ctx.warn(format!("timer {name}"));
    }

    fn on_reminder(&mut self, name: &str, tick: ReminderTick) -> Result<(), String> {
        if name == "bad" {
            return Err("bad reminder".into());
        }
        self.events.push(format!("{name} missed {}", tick.missed));
        Ok(())
    }
}

/// A grain without hooks.
#[derive(Default, Serialize, Deserialize)]
struct Plain {
    n: u32,
}

#[grain]
impl Plain {
    pub fn bump(&mut self) -> u32 {
        self.n += 1;
        self.n
    }
}

fn activate(fake: &Fake, state: Option<&str>) {
    let state = state.map(|s| s.as_bytes().to_vec());
    runtime::activate::<Counter>(fake.host(), state).unwrap();
}

fn handle(fake: &Fake, method: &str, payload: &str) -> Result<String, GrainError> {
    runtime::handle::<Counter>(fake.host(), method, payload.as_bytes())
        .map(|reply| String::from_utf8(reply).unwrap())
}

fn app(result: Result<String, GrainError>) -> String {
    match result {
        Err(GrainError::App(message)) => message,
        other => panic!("expected an app error, got {other:?}"),
    }
}

fn bad_payload(result: Result<String, GrainError>) -> String {
    match result {
        Err(GrainError::BadPayload(reason)) => reason,
        other => panic!("expected bad-payload, got {other:?}"),
    }
}

#[test]
fn new_grain_starts_from_default_and_on_activate_persists() {
    let fake = Fake::default();
    activate(&fake, None);
    assert_eq!(fake.writes(), [r#"{"value":0,"events":["activate"]}"#]);
    assert_eq!(fake.0.borrow().logs, [(LogLevel::Info, "activated".into())]);
}

#[test]
fn activate_decodes_stored_state() {
    let fake = Fake::default();
    activate(&fake, Some(r#"{"value":41}"#));
    assert_eq!(handle(&fake, "get", "").unwrap(), "41");
}

#[test]
fn activate_fails_on_undecodable_state() {
    let fake = Fake::default();
    let error = runtime::activate::<Counter>(fake.host(), Some(b"{nope".to_vec())).unwrap_err();
    assert!(error.contains("cannot decode the stored state"), "{error}");
    assert!(error.contains("Counter"), "{error}");
}

#[test]
fn activate_fails_when_on_activate_fails() {
    let fake = Fake::default();
    let state = Some(br#"{"value":666}"#.to_vec());
    let error = runtime::activate::<Counter>(fake.host(), state).unwrap_err();
    assert_eq!(error, "refusing to activate");
    assert!(fake.writes().is_empty());
}

#[test]
fn activate_without_hook_writes_nothing() {
    let fake = Fake::default();
    runtime::activate::<Plain>(fake.host(), None).unwrap();
    assert!(fake.writes().is_empty());
    let reply = runtime::handle::<Plain>(fake.host(), "bump", b"").unwrap();
    assert_eq!(reply, b"1");
    assert_eq!(fake.writes(), [r#"{"n":1}"#]);
    // No hooks: ticks and deactivation succeed and write nothing.
    runtime::on_timer::<Plain>(fake.host(), "t").unwrap();
    let tick = ReminderTick {
        scheduled_ms: 1,
        fired_ms: 2,
        missed: 0,
        idempotency_key: "r@1".into(),
    };
    runtime::on_reminder::<Plain>(fake.host(), "r", tick).unwrap();
    runtime::deactivate::<Plain>(fake.host(), DeactivationReason::Idle).unwrap();
    assert_eq!(fake.writes().len(), 1);
}

#[test]
fn mut_method_persists_after_success() {
    let fake = Fake::default();
    activate(&fake, Some(r#"{"value":1}"#));
    assert_eq!(handle(&fake, "increment", "5").unwrap(), "6");
    assert_eq!(
        fake.writes().last().unwrap(),
        r#"{"value":6,"events":["activate"]}"#
    );
}

#[test]
fn empty_payload_decodes_as_null() {
    let fake = Fake::default();
    activate(&fake, Some(r#"{"value":1}"#));
    assert_eq!(handle(&fake, "increment", "").unwrap(), "2");
    assert_eq!(handle(&fake, "increment", " null ").unwrap(), "3");
}

#[test]
fn ref_method_never_persists() {
    let fake = Fake::default();
    activate(&fake, Some(r#"{"value":7}"#));
    let before = fake.writes().len();
    assert_eq!(handle(&fake, "get", "").unwrap(), "7");
    assert_eq!(handle(&fake, "get", "null").unwrap(), "7");
    assert_eq!(fake.writes().len(), before);
}

#[test]
fn unit_return_replies_null_and_persists() {
    let fake = Fake::default();
    activate(&fake, None);
    let before = fake.writes().len();
    assert_eq!(handle(&fake, "nothing", "").unwrap(), "null");
    assert_eq!(fake.writes().len(), before + 1);
}

#[test]
fn unknown_method_is_reported_with_its_name() {
    let fake = Fake::default();
    activate(&fake, None);
    match handle(&fake, "explode", "") {
        Err(GrainError::UnknownMethod(name)) => assert_eq!(name, "explode"),
        other => panic!("expected unknown-method, got {other:?}"),
    }
    // Helpers and hooks are not messages.
    for name in [
        "helper",
        "crate_helper",
        "on_activate",
        "on_timer",
        "dispatch",
    ] {
        assert!(
            matches!(handle(&fake, name, ""), Err(GrainError::UnknownMethod(_))),
            "{name}"
        );
    }
}

#[test]
fn bad_payloads_are_rejected_before_the_method_runs() {
    let fake = Fake::default();
    activate(&fake, Some(r#"{"value":1}"#));
    let before = fake.writes().len();
    let reason = bad_payload(handle(&fake, "increment", r#""five""#));
    assert!(reason.contains("increment"), "{reason}");
    assert!(reason.contains("invalid type"), "{reason}");
    // A required argument with no payload.
    bad_payload(handle(&fake, "set", ""));
    // A method without an argument refuses one.
    let reason = bad_payload(handle(&fake, "get", "3"));
    assert!(reason.contains("takes no argument"), "{reason}");
    bad_payload(handle(&fake, "get", "{}"));
    assert_eq!(fake.writes().len(), before);
    assert_eq!(handle(&fake, "get", "").unwrap(), "1");
}

#[test]
fn err_becomes_app_error_and_does_not_persist() {
    let fake = Fake::default();
    activate(&fake, None);
    let before = fake.writes().len();
    assert_eq!(app(handle(&fake, "set", "13")), "13 is unlucky");
    assert_eq!(fake.writes().len(), before);
    assert_eq!(handle(&fake, "set", "12").unwrap(), "12");
    assert_eq!(fake.writes().len(), before + 1);
}

#[test]
fn failed_state_write_fails_the_message() {
    let fake = Fake::default();
    activate(&fake, None);
    fake.0.borrow_mut().write_error = Some("state too large".into());
    let message = app(handle(&fake, "increment", ""));
    assert!(message.contains("state too large"), "{message}");
    // `&self` methods do not write, so they still work.
    assert!(handle(&fake, "get", "").is_ok());
}

#[test]
fn clear_state_skips_the_write_and_resets_the_grain() {
    let fake = Fake::default();
    activate(&fake, Some(r#"{"value":5}"#));
    let before = fake.writes().len();
    assert_eq!(handle(&fake, "wipe", "").unwrap(), "0");
    assert_eq!(fake.writes().len(), before);
    assert_eq!(fake.0.borrow().clears, 1);
    assert_eq!(handle(&fake, "get", "").unwrap(), "0");
    // The next turn writes again.
    assert_eq!(handle(&fake, "increment", "").unwrap(), "1");
    assert_eq!(fake.writes().len(), before + 1);
}

#[test]
fn call_encodes_the_argument_and_decodes_the_reply() {
    let fake = Fake::default();
    activate(&fake, None);
    fake.0.borrow_mut().call_reply = Some(Ok(b"42".to_vec()));
    assert_eq!(handle(&fake, "ask", r#"{"key":"bob"}"#).unwrap(), "42");
    let call = fake.0.borrow().calls[0].clone();
    assert_eq!(
        call,
        (GrainId::new("counter", "bob"), "get".into(), "null".into())
    );
}

#[test]
fn call_reply_that_does_not_decode_is_bad_payload() {
    let fake = Fake::default();
    activate(&fake, None);
    fake.0.borrow_mut().call_reply = Some(Ok(br#""x""#.to_vec()));
    let message = app(handle(&fake, "ask", r#"{"key":"bob"}"#));
    assert!(message.starts_with("bad payload"), "{message}");
    assert!(message.contains("counter/bob"), "{message}");
}

#[test]
fn call_errors_pass_through_display() {
    let fake = Fake::default();
    activate(&fake, None);
    let chain = "counter/alice -> counter/alice";
    fake.0.borrow_mut().call_reply = Some(Err(CallError::Cycle(chain.into())));
    let message = app(handle(&fake, "ask", r#"{"key":"alice"}"#));
    assert!(message.contains("cycle"), "{message}");
    assert!(message.contains(chain), "{message}");
}

#[test]
fn send_stages_a_json_message() {
    let fake = Fake::default();
    activate(&fake, Some(r#"{"value":3}"#));
    assert_eq!(handle(&fake, "tell", r#""bob""#).unwrap(), "null");
    let send = fake.0.borrow().sends[0].clone();
    assert_eq!(
        send,
        (
            GrainId::new("counter", "bob"),
            "increment".into(),
            "3".into()
        )
    );
}

#[test]
fn ctx_reaches_the_host() {
    let fake = Fake::default();
    activate(&fake, None);
    assert_eq!(handle(&fake, "whoami", "").unwrap(), r#""counter/alice""#);
    assert_eq!(handle(&fake, "schedule", "").unwrap(), "3");
    let record = fake.0.borrow();
    assert_eq!(record.timers, [("t".to_owned(), 5, 0)]);
    assert_eq!(record.cancelled_timers, ["t"]);
    assert_eq!(record.cancelled_reminders, ["r"]);
    let every = |due, period| Schedule::Every {
        due: Duration::from_secs(due),
        period: Duration::from_secs(period),
    };
    assert_eq!(
        record.reminders,
        [
            ("r".to_owned(), every(1, 2), MissedPolicy::FireOnce),
            (
                "c".to_owned(),
                Schedule::Cron("0 * * * * *".into()),
                MissedPolicy::FireOnce
            ),
            ("w".to_owned(), every(0, 3), MissedPolicy::CatchUp(4)),
        ]
    );
}

#[test]
fn ctx_clock_and_cancellation() {
    let fake = Fake::default();
    fake.0.borrow_mut().cancelled = true;
    let mut ctx = Ctx::new(fake.host());
    assert!(ctx.cancelled());
    assert_eq!(ctx.now_ms(), 1_700_000_000_000);
    let since_epoch = ctx.now().duration_since(std::time::UNIX_EPOCH).unwrap();
    assert_eq!(since_epoch, Duration::from_millis(1_700_000_000_000));
    ctx.error("e");
    ctx.debug("d");
    ctx.log(LogLevel::Trace, String::from("t"));
    ctx.clear_state();
    assert!(ctx.state_cleared());
    let levels: Vec<LogLevel> = fake.0.borrow().logs.iter().map(|l| l.0).collect();
    assert_eq!(levels, [LogLevel::Error, LogLevel::Debug, LogLevel::Trace]);
}

#[test]
fn ref_hook_does_not_persist() {
    let fake = Fake::default();
    activate(&fake, None);
    let before = fake.writes().len();
    runtime::on_timer::<Counter>(fake.host(), "tock").unwrap();
    assert_eq!(fake.writes().len(), before);
    let last_log = fake.0.borrow().logs.last().cloned().unwrap();
    assert_eq!(last_log, (LogLevel::Warn, "timer tock".into()));
}

#[test]
fn mut_hooks_persist_after_success_only() {
    let fake = Fake::default();
    activate(&fake, None);
    let tick = |missed| ReminderTick {
        scheduled_ms: 10,
        fired_ms: 20,
        missed,
        idempotency_key: "k".into(),
    };
    runtime::on_reminder::<Counter>(fake.host(), "r", tick(2)).unwrap();
    assert_eq!(
        fake.writes().last().unwrap(),
        r#"{"value":0,"events":["activate","r missed 2"]}"#
    );
    let before = fake.writes().len();
    let error = runtime::on_reminder::<Counter>(fake.host(), "bad", tick(0)).unwrap_err();
    assert_eq!(error, "bad reminder");
    assert_eq!(fake.writes().len(), before);

    runtime::deactivate::<Counter>(fake.host(), DeactivationReason::Drain).unwrap();
    assert!(fake.writes().last().unwrap().contains("deactivate Drain"));
}

#[test]
fn handle_before_activate_panics() {
    // A fresh thread has a fresh (empty) instance slot.
    let panicked = std::thread::spawn(|| {
        let fake = Fake::default();
        let _ = runtime::handle::<Plain>(fake.host(), "bump", b"");
    })
    .join()
    .unwrap_err();
    let message = panicked.downcast_ref::<String>().unwrap();
    assert!(message.contains("called before `activate`"), "{message}");
}
