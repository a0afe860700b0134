//! Workspace integration tests: one binary, one module per area. Every test drives the real
//! silo with the real example components (built by `cargo xtask build`) on a real sled
//! directory in a temp dir and a real HTTP listener on 127.0.0.1:0.

mod author;
mod bad_input;
mod calls;
mod catalog;
mod cli;
mod counter;
mod crash;
mod drain;
mod faults;
mod hostile;
mod reminders;
mod soak;
mod timers;
mod upgrade;
