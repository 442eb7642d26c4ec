;; The demo's and the benchmark's job module (interop.md "Jobs"): input = x (u32 LE) and,
;; optionally, spins (u32 LE); run loops `spins` times (the task's work, about 4 wasmi
;; instructions each) and returns x*x as 8 bytes, u64 LE. Any other input length traps.
(module
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))

  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next (i32.and (i32.add (i32.add (local.get $ptr) (local.get $len)) (i32.const 7))
                               (i32.const -8)))
    (if (i32.gt_u (global.get $next) (i32.mul (memory.size) (i32.const 65536))) (then unreachable))
    (local.get $ptr))

  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (local $x i64)
    (local $spins i32)
    (local $acc i32)
    (local $out i32)
    (if (i32.and (i32.ne (local.get $len) (i32.const 4)) (i32.ne (local.get $len) (i32.const 8)))
      (then unreachable))
    (local.set $x (i64.load32_u (local.get $ptr)))
    (if (i32.eq (local.get $len) (i32.const 8))
      (then (local.set $spins (i32.load offset=4 (local.get $ptr)))))
    (block $done
      (loop $spin
        (br_if $done (i32.eqz (local.get $spins)))
        (local.set $acc (i32.add (local.get $acc) (local.get $spins)))
        (local.set $spins (i32.sub (local.get $spins) (i32.const 1)))
        (br $spin)))
    (local.set $out (call $alloc (i32.const 8)))
    (i64.store (local.get $out) (i64.mul (local.get $x) (local.get $x)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32)) (i64.const 8))))
