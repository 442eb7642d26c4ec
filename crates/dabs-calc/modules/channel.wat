;; A return channel's module: what a client needs to know to try this channel, as the JSON its
;; `run` answers ({"channel", "open_timeout_ms", "attempts"}). The client's runtime moves the
;; bytes; this module, signed by the farm, is what lets it use the channel and how.
(module
  (memory (export "memory") 1)
  (data (i32.const 0) "POLICY")
  ;;ALLOC
  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    ;; offset 0, LEN bytes
    (i64.const LEN)))
