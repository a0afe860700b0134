use granary_sdk::grain;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct G {
    value: u64,
}

#[grain]
impl G {
    pub fn new() -> Self {
        G { value: 0 }
    }
}

fn main() {}
