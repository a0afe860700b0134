//! Compile-fail tests: misuse of `#[grain]` is a compile error that points at the mistake.
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test -p granary-sdk --test ui`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
