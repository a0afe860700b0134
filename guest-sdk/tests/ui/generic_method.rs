use granary_sdk::grain;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct G {
    value: u64,
}

#[grain]
impl G {
    pub fn put<T: Into<u64>>(&mut self, value: T) -> u64 {
        self.value = value.into();
        self.value
    }
}

fn main() {}
