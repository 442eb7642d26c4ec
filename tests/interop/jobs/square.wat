;; A job module for tests/interop/check_jobs.py, written from /work/shared/spec/interop.md
;; "Jobs (R-JOB)": a core module (no WASI, no imports) exporting memory, alloc and run.
;;
;; run reads its input as a little-endian u32 (exactly 4 bytes; any other length traps, which
;; is that task's error) and writes 8 bytes: the u64 little-endian square of it. It returns
;; (out_ptr << 32) | 8.
(module
  (memory (export "memory") 1)

  ;; A bump allocator: 8-byte aligned, never frees, grows the memory when it must.
  (global $next (mut i32) (i32.const 1024))

  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local $end i32)
    (local.set $ptr (global.get $next))
    (local.set $end
      (i32.and (i32.add (i32.add (local.get $ptr) (local.get $len)) (i32.const 7))
               (i32.const -8)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u
                  (i32.add (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
                           (i32.const 65535))
                  (i32.const 16)))
              (i32.const -1))
          (then unreachable))))
    (global.set $next (local.get $end))
    (local.get $ptr))

  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (local $x i64)
    (local $out i32)
    (if (i32.ne (local.get $len) (i32.const 4)) (then unreachable))
    (local.set $x (i64.load32_u (local.get $ptr)))
    (local.set $out (call $alloc (i32.const 8)))
    (i64.store (local.get $out) (i64.mul (local.get $x) (local.get $x)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.const 8))))
