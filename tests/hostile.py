"""WAT modules that misbehave on purpose, one per rule of the sandbox.

Each is the ABI template of `tests.modules` around a small `pred` (or
`_start`) body that breaks exactly one rule.
"""

from __future__ import annotations

from tests.modules import FD_WRITE, wasm

PREVIEW1 = "wasi_snapshot_preview1"


def imp(name: str, params: str, results: str = "(result i32)", ns: str = PREVIEW1) -> str:
    return f'(import "{ns}" "{name}" (func ${name} (param {params}) {results}))'


# Writes the bytes at 100..100+n to fd `fd` (1 stdout, 2 stderr).
WRITE = """
  (func $write (param $fd i32) (param $at i32) (param $n i32)
    (i32.store (i32.const 16) (local.get $at))
    (i32.store (i32.const 20) (local.get $n))
    (drop (call $fd_write (local.get $fd) (i32.const 16) (i32.const 1) (i32.const 24))))
"""

ENDLESS_LOOP = wasm("(loop $spin (br $spin)) (i32.const 0)")

# Asks poll_oneoff for a 60 s sleep on the monotonic clock (what C's sleep() does).
SLEEPER = wasm(imports=imp("poll_oneoff", "i32 i32 i32 i32"), pred="""
    (i64.store (i32.const 104) (i64.const 1))           ;; userdata
    (i32.store8 (i32.const 112) (i32.const 0))          ;; tag: clock
    (i32.store (i32.const 120) (i32.const 1))           ;; monotonic
    (i64.store (i32.const 128) (i64.const 60000000000)) ;; 60 s
    (drop (call $poll_oneoff (i32.const 104) (i32.const 200) (i32.const 1) (i32.const 300)))
    (i32.const 0)""")

# Grows memory one page at a time, as sbrk does, until refused, then aborts.
MEMORY_HOG = wasm("""
    (block $refused
      (loop $more
        (br_if $refused (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $more)))
    (unreachable)""")

# Declares 300 pages (18.75 MB) of initial memory.
BIG_INITIAL_MEMORY = wasm(pages=300)

DEEP_RECURSION = wasm("(call $down (i32.const 0))", extra="""
  (func $down (param $depth i32) (result i32)
    (call $down (i32.add (local.get $depth) (i32.const 1))))""")

UNREACHABLE = wasm("(call $explode)", extra="(func $explode (result i32) (unreachable))")

DIVIDE_BY_ZERO = wasm("(call $divide (i32.const 7) (i32.const 0))", extra="""
  (func $divide (param i32 i32) (result i32) (i32.div_u (local.get 0) (local.get 1)))""")

OUT_OF_BOUNDS_LOAD = wasm("(i32.load (i32.const 0x7ffffff0))")

OUTPUT_OUTSIDE_MEMORY = wasm("""
    (global.set $out (i32.const 65000)) (global.set $outlen (i32.const 100000))
    (i32.const 0)""")

# Claims 2 MB of output (inside its 3 MB of memory): over a 1 MB output limit.
OUTPUT_TOO_LARGE = wasm("""
    (global.set $out (i32.const 0)) (global.set $outlen (i32.const 2097152))
    (i32.const 0)""", pages=48)

PRED_FAILS_WITH_STDERR = wasm(imports=FD_WRITE, extra=WRITE,
                              data='(data (i32.const 100) "bad input: expected digits")', pred="""
    (call $write (i32.const 2) (i32.const 100) (i32.const 26))
    (i32.const 7)""")

EXIT_IN_PRED = wasm(imports=imp("proc_exit", "i32", ""), pred="""
    (call $proc_exit (i32.const 3)) (i32.const 0)""")

LEGACY_EXIT_IN_PRED = wasm(imports=imp("proc_exit", "i32", "", ns="wasi_unstable"), pred="""
    (call $proc_exit (i32.const 4)) (i32.const 0)""")

EXIT_IN_START = wasm(imports=imp("proc_exit", "i32", ""), start="(call $proc_exit (i32.const 5))")

# Writes 100 KiB to stdout and 100 KiB to stderr, then succeeds with "done".
CHATTY = wasm(imports=FD_WRITE, extra=WRITE, data='(data (i32.const 100) "done")', pred="""
    (local $i i32)
    (loop $again
      (call $write (i32.const 1) (i32.const 1024) (i32.const 1024))
      (call $write (i32.const 2) (i32.const 1024) (i32.const 1024))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 100))))
    (global.set $out (i32.const 100)) (global.set $outlen (i32.const 4))
    (i32.const 0)""")


def probe(ns: str = PREVIEW1) -> bytes:
    """Tries every way out of the sandbox; outputs one byte per attempt.

    Bytes: errno of fd_prestat_get(3), errno of path_open(3, "etc/passwd"),
    errno of path_open(0, "/etc/passwd"), the fd path_open wrote (0x55 if
    none), environment count and size, argument count and size, errno of
    sock_accept(3), bytes read from stdin, errno of fd_write(3).
    """
    imports = "\n".join([
        imp("fd_prestat_get", "i32 i32", ns=ns),
        imp("path_open", "i32 i32 i32 i32 i32 i64 i64 i32 i32", ns=ns),
        imp("environ_sizes_get", "i32 i32", ns=ns),
        imp("args_sizes_get", "i32 i32", ns=ns),
        imp("sock_accept", "i32 i32 i32", ns=ns),
        imp("fd_read", "i32 i32 i32 i32", ns=ns),
        imp("fd_write", "i32 i32 i32 i32", ns=ns),
    ])
    return wasm(imports=imports, data="""
  (data (i32.const 100) "etc/passwd")
  (data (i32.const 120) "/etc/passwd")""", extra="""
  (func $byte (param $i i32) (param $v i32)
    (i32.store8 (i32.add (i32.const 400) (local.get $i)) (local.get $v)))""", pred="""
    (i32.store (i32.const 300) (i32.const 0x55))
    (call $byte (i32.const 0) (call $fd_prestat_get (i32.const 3) (i32.const 200)))
    (call $byte (i32.const 1) (call $path_open (i32.const 3) (i32.const 0) (i32.const 100)
      (i32.const 10) (i32.const 0) (i64.const 2) (i64.const 2) (i32.const 0) (i32.const 300)))
    (call $byte (i32.const 2) (call $path_open (i32.const 0) (i32.const 0) (i32.const 120)
      (i32.const 11) (i32.const 0) (i64.const 2) (i64.const 2) (i32.const 0) (i32.const 300)))
    (call $byte (i32.const 3) (i32.load (i32.const 300)))
    (drop (call $environ_sizes_get (i32.const 200) (i32.const 204)))
    (call $byte (i32.const 4) (i32.load (i32.const 200)))
    (call $byte (i32.const 5) (i32.load (i32.const 204)))
    (drop (call $args_sizes_get (i32.const 200) (i32.const 204)))
    (call $byte (i32.const 6) (i32.load (i32.const 200)))
    (call $byte (i32.const 7) (i32.load (i32.const 204)))
    (call $byte (i32.const 8) (call $sock_accept (i32.const 3) (i32.const 0) (i32.const 300)))
    (i32.store (i32.const 208) (i32.const 500)) (i32.store (i32.const 212) (i32.const 64))
    (drop (call $fd_read (i32.const 0) (i32.const 208) (i32.const 1) (i32.const 216)))
    (call $byte (i32.const 9) (i32.load (i32.const 216)))
    (i32.store (i32.const 208) (i32.const 100)) (i32.store (i32.const 212) (i32.const 4))
    (call $byte (i32.const 10) (call $fd_write (i32.const 3) (i32.const 208) (i32.const 1)
      (i32.const 216)))
    (global.set $out (i32.const 400)) (global.set $outlen (i32.const 11))
    (i32.const 0)""")


# Host-call floods (issue 14): a single WASI call asked to walk a list of millions,
# all zeros in a 3,600-page (225 MiB) memory the module never touches: 28 M
# zero-length iovecs at address 0 for fd_write, 3 M clock subscriptions (relative,
# timeout 0) at address 0 for poll_oneoff. Run in `_start`, where the flood
# was blamed on the next phase, `malloc_buffer()`.
FLOOD_PAGES = 3600
FLOOD_IOVECS = 28_000_000
FLOOD_SUBSCRIPTIONS = 3_000_000


def fd_write_flood(ns: str = PREVIEW1, iovecs: int = FLOOD_IOVECS) -> bytes:
    return wasm(imports=imp("fd_write", "i32 i32 i32 i32", ns=ns), pages=FLOOD_PAGES, start=f"""
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const {iovecs}) (i32.const 0)))""")


def poll_flood(ns: str = PREVIEW1, subscriptions: int = FLOOD_SUBSCRIPTIONS) -> bytes:
    return wasm(imports=imp("poll_oneoff", "i32 i32 i32 i32", ns=ns), pages=FLOOD_PAGES,
                start=f"""
    (drop (call $poll_oneoff (i32.const 0) (i32.const 0) (i32.const {subscriptions})
                             (i32.const 0)))""")


# The SLEEPER for wasi_unstable, whose clock subscription has an `identifier` u64
# before the clock id (56-byte subscriptions).
LEGACY_SLEEPER = wasm(imports=imp("poll_oneoff", "i32 i32 i32 i32", ns="wasi_unstable"), pred="""
    (i64.store (i32.const 104) (i64.const 1))           ;; userdata
    (i32.store8 (i32.const 112) (i32.const 0))          ;; tag: clock
    (i32.store (i32.const 128) (i32.const 1))           ;; monotonic
    (i64.store (i32.const 136) (i64.const 60000000000)) ;; 60 s
    (drop (call $poll_oneoff (i32.const 104) (i32.const 200) (i32.const 1) (i32.const 300)))
    (i32.const 0)""")

# Sleeps 50 ms through wasi_unstable's poll_oneoff, then outputs the errno and the
# event count it got: a legacy module's sleep() works.
LEGACY_NAP = wasm(imports=imp("poll_oneoff", "i32 i32 i32 i32", ns="wasi_unstable"), pred="""
    (i64.store (i32.const 104) (i64.const 7))
    (i32.store8 (i32.const 112) (i32.const 0))
    (i32.store (i32.const 128) (i32.const 1))
    (i64.store (i32.const 136) (i64.const 50000000))
    (i32.store8 (i32.const 400)
      (call $poll_oneoff (i32.const 104) (i32.const 200) (i32.const 1) (i32.const 300)))
    (i32.store8 (i32.const 401) (i32.load (i32.const 300)))
    (i32.store8 (i32.const 402) (i32.load8_u (i32.const 200)))  ;; the event's userdata
    (global.set $out (i32.const 400)) (global.set $outlen (i32.const 3))
    (i32.const 0)""")
