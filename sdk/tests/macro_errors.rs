//! The `#[skill]` attribute's compile errors, checked as a user sees them.

#[test]
fn skill_attribute_errors_explain_the_fix() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass.rs");
    t.compile_fail("tests/ui/async_fn.rs");
    t.compile_fail("tests/ui/two_args.rs");
    t.compile_fail("tests/ui/no_return.rs");
    t.compile_fail("tests/ui/generic.rs");
    t.compile_fail("tests/ui/with_args.rs");
}
