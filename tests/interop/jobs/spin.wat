;; A job module whose every task runs forever (until it is out of fuel): run is an endless
;; loop, so each task's result is {"task": i, "err": text} once its fuel is spent. Same ABI as
;; square.wat (/work/shared/spec/interop.md "Jobs (R-JOB)"); imports nothing.
(module
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))

  ;; A bump allocator (inputs are small; a request past the first page traps).
  (func (export "alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next
      (i32.and (i32.add (i32.add (local.get $ptr) (local.get $len)) (i32.const 7))
               (i32.const -8)))
    (if (i32.gt_u (global.get $next) (i32.const 65536)) (then unreachable))
    (local.get $ptr))

  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (loop $forever
      (br $forever))
    unreachable))
