//! Drives three sans-IO endpoints through an arbitrary script of calls, replies, network
//! faults, injected datagrams and clock steps (`dabs_sim::script`), then heals the network
//! and requires every call to end exactly once. A violated invariant is a panic, so libFuzzer
//! keeps the input; replay one with `cargo fuzz run endpoint_script <file> --sanitizer none`.
#![no_main]

use dabs_sim::script::{Op, Setup, run};
use libfuzzer_sys::fuzz_target;

/// Longer scripts only slow each run down: a few hundred steps reach every state the
/// harness can make.
const MAX_OPS: usize = 400;

fuzz_target!(|input: (Setup, Vec<Op>)| {
    let (setup, mut ops) = input;
    ops.truncate(MAX_OPS);
    if let Err(failure) = run(&setup, &ops) {
        panic!("invariant violated: {failure}");
    }
});
