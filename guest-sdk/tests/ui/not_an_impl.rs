use granary_sdk::grain;

#[grain]
pub struct G {
    value: u64,
}

fn main() {}
