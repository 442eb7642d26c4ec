;; IntegerOps, the calculator's mutable module (interop.md commands 256-260), for the client's
;; sandbox. Input: 17 bytes, the operation (0 add, 1 subtract, 2 multiply, 3 divide, 4 modulus)
;; then a and b as little-endian i64. Output: 9 bytes, a status (0 ok, 1 division_by_zero,
;; 2 overflow, 3 bad_operands) then the result as a little-endian i64. Checked exactly as the
;; server's native IntegerOps is: a result that does not fit is an overflow, never a wrap.
(module
  (memory (export "memory") 1)
  ;;ALLOC
  (func $out (param $status i32) (param $r i64) (result i64)
    (i32.store8 (i32.const 0) (local.get $status))
    (i64.store (i32.const 1) (local.get $r))
    ;; 9 bytes at offset 0
    (i64.const 9))
  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (local $op i32) (local $a i64) (local $b i64) (local $r i64)
    (if (i32.ne (local.get $len) (i32.const 17))
      (then (return (call $out (i32.const 3) (i64.const 0)))))
    (local.set $op (i32.load8_u (local.get $ptr)))
    (local.set $a (i64.load (i32.add (local.get $ptr) (i32.const 1))))
    (local.set $b (i64.load (i32.add (local.get $ptr) (i32.const 9))))
    (block $done
      (if (i32.eq (local.get $op) (i32.const 0)) (then
        (local.set $r (i64.add (local.get $a) (local.get $b)))
        ;; overflow when both operands' signs differ from the result's
        (if (i64.lt_s (i64.and (i64.xor (local.get $a) (local.get $r)) (i64.xor (local.get $b) (local.get $r))) (i64.const 0))
          (then (return (call $out (i32.const 2) (i64.const 0)))))
        (br $done)))
      (if (i32.eq (local.get $op) (i32.const 1)) (then
        (local.set $r (i64.sub (local.get $a) (local.get $b)))
        (if (i64.lt_s (i64.and (i64.xor (local.get $a) (local.get $b)) (i64.xor (local.get $a) (local.get $r))) (i64.const 0))
          (then (return (call $out (i32.const 2) (i64.const 0)))))
        (br $done)))
      (if (i32.eq (local.get $op) (i32.const 2)) (then
        ;; MIN x -1 overflows, and would trap the check's division below
        (if (i32.or
              (i32.and (i64.eq (local.get $a) (i64.const -1)) (i64.eq (local.get $b) (i64.const 0x8000000000000000)))
              (i32.and (i64.eq (local.get $b) (i64.const -1)) (i64.eq (local.get $a) (i64.const 0x8000000000000000))))
          (then (return (call $out (i32.const 2) (i64.const 0)))))
        (local.set $r (i64.mul (local.get $a) (local.get $b)))
        ;; (wasm's i32.and evaluates both sides: the division is guarded by its own if)
        (if (i64.ne (local.get $a) (i64.const 0))
          (then (if (i64.ne (i64.div_s (local.get $r) (local.get $a)) (local.get $b))
            (then (return (call $out (i32.const 2) (i64.const 0)))))))
        (br $done)))
      (if (i32.or (i32.eq (local.get $op) (i32.const 3)) (i32.eq (local.get $op) (i32.const 4))) (then
        (if (i64.eqz (local.get $b))
          (then (return (call $out (i32.const 1) (i64.const 0)))))
        (if (i32.and (i64.eq (local.get $a) (i64.const 0x8000000000000000)) (i64.eq (local.get $b) (i64.const -1)))
          (then (return (call $out (i32.const 2) (i64.const 0)))))
        (if (i32.eq (local.get $op) (i32.const 3))
          (then (local.set $r (i64.div_s (local.get $a) (local.get $b))))
          (else (local.set $r (i64.rem_s (local.get $a) (local.get $b)))))
        (br $done)))
      (return (call $out (i32.const 3) (i64.const 0))))
    (call $out (i32.const 0) (local.get $r))))
