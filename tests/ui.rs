//! Compile-time behaviour of the macros: what compiles, and the error (with its span) for each
//! misuse.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
