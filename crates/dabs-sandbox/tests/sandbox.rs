//! The sandbox against modules that work and modules that misbehave in every way the ABI lets
//! them: each bad one is its task's error, and the next task runs as if nothing happened.

use dabs_sandbox::{Limits, Module, TaskError};
use proptest::prelude::*;

/// A bump allocator that grows memory as needed, and `run` that reverses its input in place.
const REVERSE: &str = r#"
(module
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func (export "alloc") (param $len i32) (result i32)
    (local $p i32) (local $need i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $len)))
    (local.set $need (i32.sub (i32.div_u (i32.add (global.get $next) (i32.const 65535)) (i32.const 65536)) (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (if (i32.lt_s (memory.grow (local.get $need)) (i32.const 0)) (then unreachable))))
    (local.get $p))
  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32) (local $j i32) (local $t i32)
    (local.set $i (local.get $ptr))
    (local.set $j (i32.sub (i32.add (local.get $ptr) (local.get $len)) (i32.const 1)))
    (block $done (loop $swap
      (br_if $done (i32.ge_s (local.get $i) (local.get $j)))
      (local.set $t (i32.load8_u (local.get $i)))
      (i32.store8 (local.get $i) (i32.load8_u (local.get $j)))
      (i32.store8 (local.get $j) (local.get $t))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (local.set $j (i32.sub (local.get $j) (i32.const 1)))
      (br $swap)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32)) (i64.extend_i32_u (local.get $len)))))
"#;

/// `REVERSE` with `run`'s body replaced by `body` (locals $ptr, $len available).
fn with_run(body: &str) -> Vec<u8> {
    let start = REVERSE.find("(func (export \"run\")").unwrap();
    let module = format!(
        "{}(func (export \"run\") (param $ptr i32) (param $len i32) (result i64) {body}))",
        &REVERSE[..start]
    );
    wat::parse_str(module).unwrap()
}

fn module(text: &str) -> Module {
    Module::new(&wat::parse_str(text).unwrap()).unwrap()
}

#[test]
fn a_module_that_keeps_the_abi_answers_each_task() {
    let m = module(REVERSE);
    let limits = Limits::default();
    assert_eq!(m.run(b"hello", &limits).unwrap(), b"olleh");
    assert_eq!(m.run(b"", &limits).unwrap(), b"");
    // Each task gets a fresh instance: the bump allocator starts again every time.
    assert_eq!(m.run(b"ab", &limits).unwrap(), b"ba");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn any_input_comes_back_reversed(input in proptest::collection::vec(any::<u8>(), 0..200_000)) {
        let m = module(REVERSE);
        let mut want = input.clone();
        want.reverse();
        prop_assert_eq!(m.run(&input, &Limits::default()).unwrap(), want);
    }
}

#[test]
fn modules_that_cannot_be_run_are_refused_saying_why() {
    let e = Module::new(b"\0asm not really").unwrap_err();
    assert!(matches!(e, TaskError::Invalid(_)), "{e}");
    assert!(e.to_string().starts_with("the module does not validate: "), "{e}");
    let e = Module::new(&wat::parse_str(r#"(module (import "env" "clock" (func)))"#).unwrap()).unwrap_err();
    assert_eq!(e.to_string(), "the module imports env.clock; a job module may import nothing");
    // The ABI is checked when the module is read, before any task runs.
    let no_run = Module::new(
        &wat::parse_str(
            r#"(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const 0))"#,
        )
        .unwrap(),
    );
    assert_eq!(no_run.unwrap_err(), TaskError::MissingExport("run(i32, i32) -> i64"));
    let no_memory = Module::new(
        &wat::parse_str(r#"(module (func (export "alloc") (param i32) (result i32) i32.const 0))"#).unwrap(),
    );
    assert_eq!(no_memory.unwrap_err(), TaskError::MissingExport("memory"));
    let wrong_type = Module::new(
        &wat::parse_str(
            r#"(module (memory (export "memory") 1) (func (export "alloc") (param i32) (result i32) i32.const 0)
                (func (export "run") (param i32 i32) (result i32) i32.const 0))"#,
        )
        .unwrap(),
    );
    assert_eq!(wrong_type.unwrap_err(), TaskError::MissingExport("run(i32, i32) -> i64"));
}

#[test]
fn traps_fuel_memory_and_bad_regions_are_the_tasks_errors() {
    let limits = Limits { fuel: 1_000_000, memory_bytes: 4 << 20, output_bytes: 1 << 20 };
    let trap = Module::new(&with_run("unreachable")).unwrap();
    let e = trap.run(b"x", &limits).unwrap_err();
    assert!(matches!(&e, TaskError::Trap(t) if t.contains("unreachable")), "{e}");

    let spin = Module::new(&with_run("(loop $forever (br $forever)) (i64.const 0)")).unwrap();
    let t = std::time::Instant::now();
    assert_eq!(spin.run(b"x", &limits), Err(TaskError::OutOfFuel(1_000_000)));
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "fuel stops a loop promptly");

    // An input larger than the cap: alloc grows past it.
    let m = module(REVERSE);
    let e = m.run(&vec![7; 5 << 20], &limits).unwrap_err();
    assert!(matches!(e, TaskError::OutOfMemory(_)), "{e}");
    // A module asking for more memory up front than the cap.
    let big = module(
        r#"(module (memory (export "memory") 200) (func (export "alloc") (param i32) (result i32) i32.const 0)
        (func (export "run") (param i32 i32) (result i64) i64.const 0))"#,
    );
    let e = big.run(b"x", &limits).unwrap_err();
    assert!(matches!(e, TaskError::OutOfMemory(_)), "{e}");

    // `run` pointing outside memory, or at more than the output limit.
    let outside = Module::new(&with_run("(i64.const 0x00000000_00100000)")).unwrap();
    assert!(matches!(outside.run(b"x", &limits), Err(TaskError::OutOfBounds { what: "run", .. })));
    let huge = Module::new(&with_run("(i64.const 0x00000000_7fffffff)")).unwrap();
    assert!(matches!(huge.run(b"x", &limits), Err(TaskError::OutputTooLarge { .. })));

    // None of that harmed the host: the good module still answers.
    assert_eq!(m.run(b"still fine", &limits).unwrap(), b"enif llits");
}
