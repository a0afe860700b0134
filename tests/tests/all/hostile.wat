;; A component of the granary:grain@0.1.0 world whose `handle` passes bad pointers, lengths
;; and strings to the host through the canonical ABI (tests/tests/all/hostile.rs,
;; `bad_pointers_in_canonical_abi_calls`). The method name's first letter picks the attack:
;;
;;   oob_log       context.log with a message far outside linear memory
;;   wrap_log      context.log with pointer + length wrapping around 2^32
;;   utf8_log      context.log with bytes that are not UTF-8
;;   state_oob     state.state-write with a list far outside linear memory
;;   huge_state    state.state-write with a 2 GiB list
;;   retptr_state  state.state-write with valid bytes but a return area outside memory
;;   valid_log     context.log with a proper line (the control case)
;;   past_end      the guest itself loads the byte just past the end of its memory
;;   edge          the guest loads the last byte of its memory (the control case)
;;   grow_huge     the guest grows its memory by 128 MiB, past the memory limit
;;   anything else returns an empty `ok`
;;
;; The types are imported from granary:grain/types@0.1.0 and re-imported by name for the
;; exports, as wit-component lays out a component built by granary-sdk.
(component
  (type $types-ty (instance
    (type (;0;) (variant (case "unknown-method" string) (case "bad-payload" string) (case "app" string)))
    (export (;1;) "grain-error" (type (eq 0)))
    (type (;2;) (enum "idle" "evicted" "drain" "upgrade"))
    (export (;3;) "deactivation-reason" (type (eq 2)))
    (type (;4;) (record (field "scheduled-ms" u64) (field "fired-ms" u64) (field "missed" u32) (field "idempotency-key" string)))
    (export (;5;) "reminder-tick" (type (eq 4)))
    (type (;6;) (enum "trace" "debug" "info" "warn" "error"))
    (export (;7;) "log-level" (type (eq 6)))
  ))
  (import "granary:grain/types@0.1.0" (instance $types (type $types-ty)))
  (alias export $types "log-level" (type $log-level))
  (type $context-ty (instance
    (alias outer 1 $log-level (type (;0;)))
    (export (;1;) "log-level" (type (eq 0)))
    (type (;2;) (func (param "level" 1) (param "message" string)))
    (export (;0;) "log" (func (type 2)))
  ))
  (import "granary:grain/context@0.1.0" (instance $context (type $context-ty)))
  (type $state-ty (instance
    (type (;0;) (list u8))
    (type (;1;) (result (error string)))
    (type (;2;) (func (param "bytes" 0) (result 1)))
    (export (;0;) "state-write" (func (type 2)))
  ))
  (import "granary:grain/state@0.1.0" (instance $state (type $state-ty)))
  (alias export $types "grain-error" (type $grain-error-def))
  (import "grain-error" (type $grain-error (eq $grain-error-def)))
  (alias export $types "deactivation-reason" (type $reason-def))
  (import "deactivation-reason" (type $reason (eq $reason-def)))
  (alias export $types "reminder-tick" (type $tick-def))
  (import "reminder-tick" (type $tick (eq $tick-def)))

  (core module $libc
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32) (local $end i32) (local $have i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.const 7)) (i32.const -8)))
      (local.set $end (i32.add (local.get $p) (local.get 3)))
      (local.set $have (i32.mul (memory.size) (i32.const 65536)))
      (if (i32.gt_u (local.get $end) (local.get $have))
        (then
          (if (i32.eq
                (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end) (local.get $have)) (i32.const 16)) (i32.const 1)))
                (i32.const -1))
            (then unreachable))))
      (global.set $bump (local.get $end))
      (local.get $p))
    (data (i32.const 64) "\ff\fe\fd")
    (data (i32.const 80) "hello from WAT")
  )
  (core instance $libc (instantiate $libc))
  (alias core export $libc "memory" (core memory $memory))
  (alias core export $libc "realloc" (core func $realloc))

  (alias export $context "log" (func $log))
  (core func $log-lowered (canon lower (func $log) (memory $memory) string-encoding=utf8))
  (alias export $state "state-write" (func $state-write))
  (core func $state-write-lowered (canon lower (func $state-write) (memory $memory) (realloc $realloc)))

  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "log" (func $log (param i32 i32 i32)))
    (import "host" "state-write" (func $state-write (param i32 i32 i32)))
    ;; 16..48: an all-zero return area, which reads as `ok` for every export.
    (func (export "activate") (param i32 i32 i32) (result i32) (i32.const 16))
    (func (export "handle") (param $method i32) (param $method-len i32) (param i32 i32) (result i32)
      (local $first i32)
      (local.set $first (i32.load8_u (local.get $method)))
      ;; 'o': a message far outside linear memory
      (if (i32.eq (local.get $first) (i32.const 111))
        (then (call $log (i32.const 2) (i32.const 0x7fff0000) (i32.const 64))))
      ;; 'w': pointer + length wraps around 2^32
      (if (i32.eq (local.get $first) (i32.const 119))
        (then (call $log (i32.const 2) (i32.const 0xfffffff0) (i32.const 0x20))))
      ;; 'u': in bounds, but not UTF-8
      (if (i32.eq (local.get $first) (i32.const 117))
        (then (call $log (i32.const 2) (i32.const 64) (i32.const 3))))
      ;; 'v': a valid line (the control case)
      (if (i32.eq (local.get $first) (i32.const 118))
        (then (call $log (i32.const 2) (i32.const 80) (i32.const 14))))
      ;; 's': state bytes far outside linear memory
      (if (i32.eq (local.get $first) (i32.const 115))
        (then (call $state-write (i32.const 0x7fff0000) (i32.const 1000) (i32.const 32))))
      ;; 'h': a 2 GiB list starting at 0
      (if (i32.eq (local.get $first) (i32.const 104))
        (then (call $state-write (i32.const 0) (i32.const 0x7fffffff) (i32.const 32))))
      ;; 'p': a load one byte past the end of linear memory, which must trap
      (if (i32.eq (local.get $first) (i32.const 112))
        (then (drop (i32.load8_u (i32.mul (memory.size) (i32.const 65536))))))
      ;; 'e': a load of the last byte of linear memory, which must not
      (if (i32.eq (local.get $first) (i32.const 101))
        (then (drop (i32.load8_u (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 1))))))
      ;; 'g': memory.grow by 2048 pages (128 MiB), past the silo's memory limit
      (if (i32.eq (local.get $first) (i32.const 103))
        (then (drop (memory.grow (i32.const 2048)))))
      ;; 'r': valid bytes, but the result must be written outside memory
      (if (i32.eq (local.get $first) (i32.const 114))
        (then (call $state-write (i32.const 80) (i32.const 14) (i32.const 0x7ffffff0))))
      (i32.const 16))
    (func (export "on-timer") (param i32 i32) (result i32) (i32.const 16))
    (func (export "on-reminder") (param i32 i32 i64 i64 i32 i32 i32) (result i32) (i32.const 16))
    (func (export "deactivate") (param i32) (result i32) (i32.const 16))
  )
  (core instance $host-funcs
    (export "log" (func $log-lowered))
    (export "state-write" (func $state-write-lowered)))
  (core instance $libc-exports (export "memory" (memory $memory)))
  (core instance $main (instantiate $main
    (with "libc" (instance $libc-exports))
    (with "host" (instance $host-funcs))))

  (type $bytes (list u8))
  (type $unit-result (result (error string)))
  (type $activate-ty (func (param "state" (option $bytes)) (result $unit-result)))
  (alias core export $main "activate" (core func $activate-core))
  (func $activate (type $activate-ty) (canon lift (core func $activate-core) (memory $memory) (realloc $realloc)))
  (export "activate" (func $activate))

  (type $handle-ty (func (param "method" string) (param "payload" $bytes) (result (result $bytes (error $grain-error)))))
  (alias core export $main "handle" (core func $handle-core))
  (func $handle (type $handle-ty) (canon lift (core func $handle-core) (memory $memory) (realloc $realloc) string-encoding=utf8))
  (export "handle" (func $handle))

  (type $timer-ty (func (param "name" string) (result $unit-result)))
  (alias core export $main "on-timer" (core func $timer-core))
  (func $on-timer (type $timer-ty) (canon lift (core func $timer-core) (memory $memory) (realloc $realloc) string-encoding=utf8))
  (export "on-timer" (func $on-timer))

  (type $reminder-ty (func (param "name" string) (param "tick" $tick) (result $unit-result)))
  (alias core export $main "on-reminder" (core func $reminder-core))
  (func $on-reminder (type $reminder-ty) (canon lift (core func $reminder-core) (memory $memory) (realloc $realloc) string-encoding=utf8))
  (export "on-reminder" (func $on-reminder))

  (type $deactivate-ty (func (param "reason" $reason) (result $unit-result)))
  (alias core export $main "deactivate" (core func $deactivate-core))
  (func $deactivate (type $deactivate-ty) (canon lift (core func $deactivate-core) (memory $memory)))
  (export "deactivate" (func $deactivate))
)
