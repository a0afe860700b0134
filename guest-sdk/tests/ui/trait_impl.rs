use granary_sdk::grain;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct G {
    value: u64,
}

#[grain]
impl Default for G {
    fn default() -> Self {
        G { value: 1 }
    }
}

fn main() {}
