"""The ABI driver on its own: the exact call sequence, both WASI namespaces."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from tests import modules
from tests.support import INTSUM, TUTORIAL_INPUT
from wasmq.broker.errors import TaskFailed
from wasmq.broker.limits import Limits
from wasmq.workers.runtime import Outcome, Runtime

pytestmark = pytest.mark.fast

LEGACY = wasmtime.wat2wasm((Path(__file__).parent / "wasm" / "legacy.wat").read_text())
LIMITS = Limits(timeout_s=5)


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime()


def run(runtime: Runtime, wasm: bytes, data: bytes, limits: Limits = LIMITS) -> Outcome:
    import hashlib

    prepared = runtime.prepare(hashlib.sha256(wasm).hexdigest(), lambda: wasm)
    return runtime.run(prepared, data, limits)


def test_intsum_sums_the_tutorial_input(runtime: Runtime) -> None:
    out = run(runtime, INTSUM.read_bytes(), TUTORIAL_INPUT.encode())
    assert out.output == b'{"output": [55]}'


# Logs every ABI call it receives on stdout, and outputs the input byte that
# follows the data (the trailing NUL) as a decimal digit string.
TRACER = modules.wasm(imports=modules.FD_WRITE, data='(data (i32.const 100) "S M P L C F")',
                      extra="""
  (func $log (param $at i32)
    (i32.store (i32.const 200) (local.get $at))
    (i32.store (i32.const 204) (i32.const 2))
    (drop (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 208))))
  (func (export "get_out_len_traced") (result i32) (i32.const 0))
""", start="(call $log (i32.const 100))", pred="""
    (call $log (i32.const 104))
    (global.set $out (i32.const 300))
    (i32.store8 (i32.const 300)
      (i32.add (i32.const 48) (i32.load8_u (i32.add (global.get $in) (global.get $inlen)))))
    (global.set $outlen (i32.const 1))
    (i32.const 0)""")


def test_input_gets_a_trailing_nul_and_calls_come_in_abi_order(runtime: Runtime) -> None:
    out = run(runtime, TRACER, b"abc")
    assert out.output == b"0"  # the byte after the data is NUL
    assert out.stdout == "S P "


def test_each_task_gets_a_fresh_instance(runtime: Runtime) -> None:
    counter = modules.wasm(data='(data (i32.const 16) "0")', pred="""
        (i32.store8 (i32.const 16) (i32.add (i32.load8_u (i32.const 16)) (i32.const 1)))
        (global.set $out (i32.const 16)) (global.set $outlen (i32.const 1))
        (i32.const 0)""")
    assert [run(runtime, counter, b"").output for _ in range(3)] == [b"1", b"1", b"1"]


def test_legacy_wasi_unstable_module_runs_and_its_stdout_is_captured(runtime: Runtime) -> None:
    out = run(runtime, LEGACY, b"hello, legacy")
    assert out.output == b"HELLO, LEGACY"
    assert "hello from wasi_unstable" in out.stdout
    assert "legacy stderr" in out.stderr


def test_initialize_is_accepted_instead_of_start(runtime: Runtime) -> None:
    reactor = modules.wasm(entry="_initialize")
    assert run(runtime, reactor, b"reactor").output == b"reactor"


def test_output_pointer_outside_memory_fails_the_task(runtime: Runtime) -> None:
    bad = modules.wasm(pred="""
        (global.set $out (i32.const 65000)) (global.set $outlen (i32.const 10000))
        (i32.const 0)""")
    with pytest.raises(TaskFailed, match="outside linear memory"):
        run(runtime, bad, b"x")


def test_pred_failure_carries_the_stderr_tail(runtime: Runtime) -> None:
    noisy = modules.wasm(imports=modules.FD_WRITE, data='(data (i32.const 100) "bad input")',
                         pred="""
        (i32.store (i32.const 200) (i32.const 100))
        (i32.store (i32.const 204) (i32.const 9))
        (drop (call $fd_write (i32.const 2) (i32.const 200) (i32.const 1) (i32.const 208)))
        (i32.const 1)""")
    with pytest.raises(TaskFailed, match="pred\\(\\) returned 1.*bad input"):
        run(runtime, noisy, b"x")


def test_the_runtime_serves_the_next_task_after_a_failure(runtime: Runtime) -> None:
    with pytest.raises(TaskFailed):
        run(runtime, modules.TRAPPING, b"x")
    assert run(runtime, modules.ECHO, b"fine").output == b"fine"


def test_a_short_sleep_within_the_time_limit_returns_its_clock_event(runtime: Runtime) -> None:
    napper = modules.wasm(imports='(import "wasi_snapshot_preview1" "poll_oneoff" '
                                  '(func $poll (param i32 i32 i32 i32) (result i32)))', pred="""
        (i64.store (i32.const 104) (i64.const 42))         ;; userdata
        (i32.store (i32.const 120) (i32.const 1))          ;; monotonic clock
        (i64.store (i32.const 128) (i64.const 50000000))   ;; 50 ms
        (i32.store8 (i32.const 400)
          (i32.add (i32.const 48) (call $poll (i32.const 104) (i32.const 200) (i32.const 1)
                                              (i32.const 300))))
        (i32.store8 (i32.const 401) (i32.add (i32.const 48) (i32.load (i32.const 300))))
        (i32.store8 (i32.const 402) (i32.load8_u (i32.const 200)))
        (global.set $out (i32.const 400)) (global.set $outlen (i32.const 3))
        (i32.const 0)""")
    out = run(runtime, napper, b"")
    assert out.output == b"01*"  # errno 0, one event, userdata 42
    assert out.exec_ms >= 50
