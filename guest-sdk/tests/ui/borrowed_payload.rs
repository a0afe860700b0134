use granary_sdk::grain;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct G {
    value: u64,
}

#[grain]
impl G {
    pub fn greet(&self, name: &str) -> String {
        format!("hello {name}")
    }
}

fn main() {}
