"""The soak benchmark, short: every call of a steady load answered right, memory flat
enough that only a leak on every call would cross the bound (the figures of a
ten-minute run are in the README, from `python -m bench.soak`)."""

from __future__ import annotations

from pathlib import Path

from bench import soak


def test_a_short_soak_answers_every_call_right_with_memory_roughly_flat(
        tmp_path: Path) -> None:
    result = soak.run(seconds=8, rate=50, sample_every=0.5, workdir=tmp_path)
    print(soak.report(result))
    assert result["sent"] == 400
    assert result["right"] == result["sent"], result["wrong"]
    assert result["samples"] >= 10
    for part in ("gateway", "worker", "redis-server"):
        memory = result["memory_mb"][part]
        assert memory["first"] > 1, f"{part} was not sampled: {memory}"
        assert memory["growth_pct"] < 50, f"{part} grew {memory}"
