use granary_sdk::{Ctx, grain};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct G {
    value: u64,
}

#[grain]
impl G {
    fn on_timer(&mut self, ctx: &mut Ctx) {
        let _ = ctx;
        self.value += 1;
    }
}

fn main() {}
