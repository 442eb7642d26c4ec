//! Drives the farm's control plane (`dabs_sim::control`) through an arbitrary script of sealed
//! requests and announcements, replays, bit flips, misrouted copies, forgeries, garbage and
//! clock steps, and requires the receiver to act on exactly the member's genuine, fresh
//! messages, each once. A violation is a panic; replay one with
//! `cargo fuzz run control_script <file> --sanitizer none`.
#![no_main]

use dabs_sim::control::{ControlOp, run};
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 400;

fuzz_target!(|ops: Vec<ControlOp>| {
    let ops = &ops[..ops.len().min(MAX_OPS)];
    if let Err(violation) = run(ops) {
        panic!("control-plane invariant violated: {violation:?}");
    }
});
