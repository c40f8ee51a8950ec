"""The built wheel: installing wasmq adds only the `wasmq` package to
site-packages (api/, broker/ and workers/ go in as wasmq.api, wasmq.broker,
wasmq.workers), with its templates, static files and Lua scripts, and without
the test and bench scaffolding."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, copy_checkout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """`pip wheel` of a copy of this checkout (an in-tree build would leave
    build/ and egg-info behind in the worktree)."""
    work = tmp_path_factory.mktemp("wheel")
    source = copy_checkout(work / "src")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "-w", str(work / "out"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    [path] = (work / "out").glob("wasmq-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def names(wheel: zipfile.ZipFile) -> list[str]:
    return wheel.namelist()


def test_the_wheel_holds_only_the_wasmq_package_and_its_dist_info(wheel) -> None:
    top = {name.split("/")[0] for name in names(wheel)}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1 and next(iter(dist_info)).startswith("wasmq-")
    assert top - dist_info == {"wasmq"}


def test_the_design_cards_folders_install_inside_wasmq(wheel) -> None:
    shipped = set(names(wheel))
    for module in ("wasmq/api/app.py", "wasmq/broker/errors.py", "wasmq/workers/tasks.py",
                   "wasmq/api/templates/base.html", "wasmq/api/static/console.js",
                   "wasmq/cli.py"):
        assert module in shipped, module
    for script in (ROOT / "broker").rglob("*.lua"):  # the Redis scripts, beside their modules
        assert f"wasmq/broker/{script.relative_to(ROOT / 'broker').as_posix()}" in shipped
    entry_points = wheel.read(next(n for n in shipped if n.endswith("entry_points.txt")))
    assert b"wasmq = wasmq.cli:main" in entry_points


def test_the_wheel_holds_no_test_or_bench_scaffolding(wheel) -> None:
    shipped = names(wheel)
    assert not [n for n in shipped if n.startswith(("tests/", "bench/", "wasmq/tests/",
                                                    "wasmq/bench/"))]
    assert not [n for n in shipped if Path(n).name.startswith("test_")]


def test_the_local_process_helpers_of_tests_and_bench_are_not_shipped(wheel) -> None:
    assert "wasmq/localstack.py" not in names(wheel)


def test_installing_the_wheel_adds_only_wasmq_to_site_packages(wheel, tmp_path: Path) -> None:
    target = tmp_path / "site-packages"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                                "--target", str(target), wheel.filename],
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    added = {p.name for p in target.iterdir()} - {"bin"}
    assert {a for a in added if not a.endswith(".dist-info")} == {"wasmq"}, added
