//! The `granary` binary; all logic lives in the library (`granary::cli`).

fn main() -> std::process::ExitCode {
    granary::cli::main()
}
