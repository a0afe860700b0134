use granary_sdk::grain;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct G {
    value: u64,
}

#[grain]
impl G {
    pub async fn get(&self) -> u64 {
        self.value
    }
}

fn main() {}
