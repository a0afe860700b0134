//! `counter`: the smallest useful grain. Each key is an independent counter.
//!
//! Build every example into a component and run a local silo with them:
//!
//! ```text
//! cargo xtask build
//! cargo xtask demo
//! ```
//!
//! Then, in another terminal:
//!
//! ```text
//! granary call counter/alice increment 5    # 5
//! granary call counter/alice increment      # 6 (no argument adds 1)
//! granary call counter/alice get            # 6
//! granary call counter/alice reset          # 0
//! ```
//!
//! The component is `target/wasm32-wasip2/guest/counter.wasm`
//! (`cargo build --target wasm32-wasip2 --profile guest -p counter`).

use granary_sdk::grain;
use serde::{Deserialize, Serialize};

/// A counter's state, persisted after every successful `&mut self` method.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counter {
    value: u64,
}

#[grain]
impl Counter {
    /// Adds `by` (1 when the payload is empty) and returns the new value.
    pub fn increment(&mut self, by: Option<u64>) -> u64 {
        self.value = self.value.saturating_add(by.unwrap_or(1));
        self.value
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value
    }

    /// Sets the value back to 0 and returns it.
    pub fn reset(&mut self) -> u64 {
        self.value = 0;
        self.value
    }
}
