"""How wasmq starts a Python child: `python -m <module>`, minus the working directory.

`python -m` puts the working directory first on `sys.path`. Run from the root
of a wasmq checkout over a non-editable install, the checkout's own `wasmq/`
folder (which holds neither `broker` nor `api`: the wheel maps them in) would
shadow the installed package, and every child would die of a
`ModuleNotFoundError`. A child of wasmq always imports the wasmq its parent
runs, whatever folder the user started it from. (`python -P` does the same,
from Python 3.11 on only; `-I` would also drop the user's site-packages.)
"""

from __future__ import annotations

import sys

# `python -c` puts '' (the working directory) first on sys.path: dropped, then
# the module runs as `-m` would run it (as __main__, with its file as argv[0]).
_RUN_MODULE = ("import runpy, sys\n"
               "if sys.path[:1] == ['']: del sys.path[0]\n"
               "del sys.argv[0]\n"
               "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)")


def python_module(module: str, *args: str) -> list[str]:
    """The argv of `python -m module args...`, importing only what is installed."""
    return [sys.executable, "-c", _RUN_MODULE, module, *args]
