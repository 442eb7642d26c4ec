;; A feature add-on: a result written with its digits in groups of three ("-1,234,567"), for
;; clients that ask for the feature. Input: the integer, 8 bytes little-endian. Output: ASCII.
(module
  (memory (export "memory") 1)
  ;;ALLOC
  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (local $v i64) (local $neg i32) (local $at i32) (local $digits i32)
    (if (i32.ne (local.get $len) (i32.const 8))
      (then (return (i64.const 0))))
    (local.set $v (i64.load (local.get $ptr)))
    (local.set $neg (i64.lt_s (local.get $v) (i64.const 0)))
    ;; the magnitude as unsigned: 0 - v is right for every negative v, i64::MIN included
    (if (local.get $neg) (then (local.set $v (i64.sub (i64.const 0) (local.get $v)))))
    ;; digits are written backwards, ending just below offset 64
    (local.set $at (i32.const 64))
    (loop $next
      (if (i32.and (i32.gt_u (local.get $digits) (i32.const 0))
                   (i32.eqz (i32.rem_u (local.get $digits) (i32.const 3))))
        (then
          (local.set $at (i32.sub (local.get $at) (i32.const 1)))
          (i32.store8 (local.get $at) (i32.const 44))))
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
      (br_if $next (i64.ne (local.get $v) (i64.const 0))))
    (if (local.get $neg)
      (then
        (local.set $at (i32.sub (local.get $at) (i32.const 1)))
        (i32.store8 (local.get $at) (i32.const 45))))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $at)) (i64.const 32))
      (i64.extend_i32_u (i32.sub (i32.const 64) (local.get $at))))))
