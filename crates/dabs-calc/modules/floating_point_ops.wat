;; FloatingPointOps (commands 272-275): peer-locked, pinned to the server by its interface, so
;; it is published but never listed or sent to a client (R-CL-4). Same ABI as integer_ops.wat:
;; input the operation (0 add, 1 subtract, 2 multiply, 3 divide) and x, y as little-endian
;; f64; output a status (0 ok, 1 division_by_zero, 2 overflow, 3 bad_operands) and the result.
(module
  (memory (export "memory") 1)
  ;;ALLOC
  (func $out (param $status i32) (param $r f64) (result i64)
    (i32.store8 (i32.const 0) (local.get $status))
    (f64.store (i32.const 1) (local.get $r))
    (i64.const 9))
  (func $finite (param $x f64) (result i32)
    ;; x - x is 0 for finite x, NaN for infinities and NaN
    (f64.eq (f64.sub (local.get $x) (local.get $x)) (f64.const 0)))
  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (local $op i32) (local $x f64) (local $y f64) (local $r f64)
    (if (i32.ne (local.get $len) (i32.const 17))
      (then (return (call $out (i32.const 3) (f64.const 0)))))
    (local.set $op (i32.load8_u (local.get $ptr)))
    (local.set $x (f64.load (i32.add (local.get $ptr) (i32.const 1))))
    (local.set $y (f64.load (i32.add (local.get $ptr) (i32.const 9))))
    (block $done
      (if (i32.eq (local.get $op) (i32.const 0)) (then (local.set $r (f64.add (local.get $x) (local.get $y))) (br $done)))
      (if (i32.eq (local.get $op) (i32.const 1)) (then (local.set $r (f64.sub (local.get $x) (local.get $y))) (br $done)))
      (if (i32.eq (local.get $op) (i32.const 2)) (then (local.set $r (f64.mul (local.get $x) (local.get $y))) (br $done)))
      (if (i32.eq (local.get $op) (i32.const 3)) (then
        (if (f64.eq (local.get $y) (f64.const 0)) (then (return (call $out (i32.const 1) (f64.const 0)))))
        (local.set $r (f64.div (local.get $x) (local.get $y)))
        (br $done)))
      (return (call $out (i32.const 3) (f64.const 0))))
    (if (i32.and (i32.eqz (call $finite (local.get $r)))
                 (i32.and (call $finite (local.get $x)) (call $finite (local.get $y))))
      (then (return (call $out (i32.const 2) (f64.const 0)))))
    (call $out (i32.const 0) (local.get $r))))
