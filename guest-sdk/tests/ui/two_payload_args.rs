use granary_sdk::{Ctx, grain};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct G {
    value: u64,
}

#[grain]
impl G {
    pub fn add(&mut self, ctx: &mut Ctx, a: u64, b: u64) -> u64 {
        let _ = ctx;
        self.value += a + b;
        self.value
    }
}

fn main() {}
