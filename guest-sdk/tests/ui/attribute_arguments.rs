use granary_sdk::{Ctx, grain};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct G {
    value: u64,
}

#[grain(name = "g")]
impl G {
    pub fn get(&self, ctx: &mut Ctx) -> u64 {
        let _ = ctx;
        self.value
    }
}

fn main() {}
