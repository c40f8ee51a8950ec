;; legacy.wat - a Scailable-ABI module that imports WASI from the OLD namespace
;; `wasi_unstable` (as 2019-2020 toolchains emitted), for testing
;; workers/wasi_unstable.py end to end.
;;
;; pred():
;;   * writes "hello from wasi_unstable\n" to stdout and "legacy stderr\n" to
;;     stderr with fd_write (and checks nwritten),
;;   * checks the legacy host: fd_seek(1, 0, CUR=0) is ESPIPE (70) and an invalid
;;     whence (3) is EINVAL (28); no args and no environment; clock_time_get
;;     (REALTIME) is non-zero; random_get succeeds; fd_fdstat_get(1) says
;;     CHARACTER_DEVICE (2); fd_prestat_get(3) is EBADF (8) (no preopens);
;;     sock_shutdown, which the host does not implement, is ENOSYS (52) - so this
;;     module needs define_missing_stubs as well as define_wasi_unstable,
;;   * output = the input (up to its NUL or the buffer end) with ASCII a-z
;;     UPPER-CASED, every other byte unchanged (so UTF-8 stays valid).
;; pred() returns 0 on success, or the number of the first failed check (1-12).
;; Extra export exit_with(code) calls proc_exit(code).
(module
  (type $fd_rw   (func (param i32 i32 i32 i32) (result i32)))
  (type $i32x2   (func (param i32 i32) (result i32)))
  (import "wasi_unstable" "fd_write" (func $fd_write (type $fd_rw)))
  (import "wasi_unstable" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_unstable" "args_sizes_get" (func $args_sizes_get (type $i32x2)))
  (import "wasi_unstable" "environ_sizes_get" (func $environ_sizes_get (type $i32x2)))
  (import "wasi_unstable" "clock_time_get"
    (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_unstable" "random_get" (func $random_get (type $i32x2)))
  (import "wasi_unstable" "fd_seek"
    (func $fd_seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_unstable" "fd_fdstat_get" (func $fd_fdstat_get (type $i32x2)))
  (import "wasi_unstable" "fd_prestat_get" (func $fd_prestat_get (type $i32x2)))
  (import "wasi_unstable" "sock_shutdown" (func $sock_shutdown (type $i32x2)))

  (memory (export "memory") 1)

  ;; static data
  (data (i32.const 16) "hello from wasi_unstable\n")   ;; 25 bytes
  (data (i32.const 48) "legacy stderr\n")               ;; 14 bytes
  ;; scratch: 64 iovec (8) | 72 nwritten | 80 newoffset (8) | 88 time (8)
  ;;          96 fdstat (24) | 128 random (16) | 144 u32 | 148 u32

  (global $heap (mut i32) (i32.const 1024))   ;; bump allocator top
  (global $in_ptr (mut i32) (i32.const 0))
  (global $in_cap (mut i32) (i32.const 0))
  (global $out_ptr (mut i32) (i32.const 0))
  (global $out_len (mut i32) (i32.const 0))

  (func $start (export "_start"))

  ;; bump allocator: 8-byte aligned, grows memory as needed, 0 when out of memory
  (func $alloc (param $n i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (global.get $heap))
    (local.set $end
      (i32.and (i32.add (i32.add (local.get $p) (local.get $n)) (i32.const 7))
               (i32.const -8)))
    (if (i32.lt_u (local.get $end) (local.get $p)) (then (return (i32.const 0))))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.sub
                  (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16))
                  (memory.size)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))

  (func (export "malloc_buffer") (param $n i32) (result i32)
    (global.set $in_ptr (call $alloc (local.get $n)))
    (global.set $in_cap (select (local.get $n) (i32.const 0) (global.get $in_ptr)))
    (global.get $in_ptr))

  (func (export "free_buffer") (param i32))   ;; bump allocator: nothing to free

  (func (export "get_out_len") (result i32) (global.get $out_len))
  (func (export "get_out_loc") (result i32) (global.get $out_ptr))

  (func (export "exit_with") (param $code i32)
    (call $proc_exit (local.get $code)))

  ;; write [ptr, ptr+len) to fd; 1 if fd_write failed or was short
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 64) (local.get $ptr))
    (i32.store (i32.const 68) (local.get $len))
    (if (call $fd_write (local.get $fd) (i32.const 64) (i32.const 1) (i32.const 72))
      (then (return (i32.const 1))))
    (i32.ne (i32.load (i32.const 72)) (local.get $len)))

  (func (export "pred") (result i32)
    (local $n i32) (local $i i32) (local $c i32)
    (if (call $write (i32.const 1) (i32.const 16) (i32.const 25))
      (then (return (i32.const 1))))
    (if (call $write (i32.const 2) (i32.const 48) (i32.const 14))
      (then (return (i32.const 2))))
    ;; old whence: CUR=0 -> stdout is not seekable
    (if (i32.ne (call $fd_seek (i32.const 1) (i64.const 0) (i32.const 0) (i32.const 80))
                (i32.const 70))
      (then (return (i32.const 3))))
    (if (i32.ne (call $fd_seek (i32.const 1) (i64.const 0) (i32.const 3) (i32.const 80))
                (i32.const 28))
      (then (return (i32.const 4))))
    (i64.store (i32.const 144) (i64.const -1))
    (if (i32.or (call $args_sizes_get (i32.const 144) (i32.const 148))
                (i32.or (i32.load (i32.const 144)) (i32.load (i32.const 148))))
      (then (return (i32.const 5))))
    (i64.store (i32.const 144) (i64.const -1))
    (if (i32.or (call $environ_sizes_get (i32.const 144) (i32.const 148))
                (i32.or (i32.load (i32.const 144)) (i32.load (i32.const 148))))
      (then (return (i32.const 6))))
    (if (i32.or (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 88))
                (i64.eqz (i64.load (i32.const 88))))
      (then (return (i32.const 7))))
    (if (call $random_get (i32.const 128) (i32.const 16))
      (then (return (i32.const 8))))
    (if (i32.or (call $fd_fdstat_get (i32.const 1) (i32.const 96))
                (i32.ne (i32.load8_u (i32.const 96)) (i32.const 2)))
      (then (return (i32.const 9))))
    (if (i32.ne (call $fd_prestat_get (i32.const 3) (i32.const 144)) (i32.const 8))
      (then (return (i32.const 10))))
    (if (i32.ne (call $sock_shutdown (i32.const 3) (i32.const 0)) (i32.const 52))
      (then (return (i32.const 11))))

    ;; n = length of the input: up to the first NUL, at most the buffer size
    (block $done
      (loop $scan
        (br_if $done (i32.ge_u (local.get $n) (global.get $in_cap)))
        (br_if $done (i32.eqz (i32.load8_u (i32.add (global.get $in_ptr) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $scan)))
    (global.set $out_ptr (call $alloc (local.get $n)))
    (if (i32.and (i32.eqz (global.get $out_ptr)) (i32.ne (local.get $n) (i32.const 0)))
      (then (return (i32.const 12))))
    (global.set $out_len (local.get $n))
    (block $copied
      (loop $copy
        (br_if $copied (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $c (i32.load8_u (i32.add (global.get $in_ptr) (local.get $i))))
        (if (i32.lt_u (i32.sub (local.get $c) (i32.const 97)) (i32.const 26))  ;; 'a'..'z'
          (then (local.set $c (i32.sub (local.get $c) (i32.const 32)))))
        (i32.store8 (i32.add (global.get $out_ptr) (local.get $i)) (local.get $c))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (i32.const 0))
)
