"""The Scailable ABI: the exports a module must have and what it may import.

Both upload validation (gateway) and execution (workers) read this module, so
the contract is written down exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import wasmtime

from wasmq.broker.errors import InvalidModule

I32 = "i32"

# export name -> (params, results)
FUNCTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "malloc_buffer": ((I32,), (I32,)),
    "free_buffer": ((I32,), ()),
    "pred": ((), (I32,)),
    "get_out_len": ((), (I32,)),
    "get_out_loc": ((), (I32,)),
}
ENTRY_POINTS = ("_start", "_initialize")
MEMORY = "memory"
WASI_NAMESPACES = ("wasi_snapshot_preview1", "wasi_unstable")
WASM_MAGIC = b"\0asm"
START_SECTION = 8
# What wasmtime provides under wasi_snapshot_preview1; any other name there
# would only fail at instantiation, so upload refuses it up front. Unknown
# wasi_unstable names are linked to stubs that answer ENOSYS.
PREVIEW1_FUNCTIONS = frozenset("""
args_get args_sizes_get environ_get environ_sizes_get clock_res_get clock_time_get
fd_advise fd_allocate fd_close fd_datasync fd_fdstat_get fd_fdstat_set_flags
fd_fdstat_set_rights fd_filestat_get fd_filestat_set_size fd_filestat_set_times fd_pread
fd_prestat_get fd_prestat_dir_name fd_pwrite fd_read fd_readdir fd_renumber fd_seek fd_sync
fd_tell fd_write path_create_directory path_filestat_get path_filestat_set_times path_link
path_open path_readlink path_remove_directory path_rename path_symlink path_unlink_file
poll_oneoff proc_exit proc_raise sched_yield random_get sock_accept sock_recv sock_send
sock_shutdown""".split())


# What a module's record keeps is bounded like a model's (issue 22, point 5): at most so
# many imports and exports, each name at most MAX_NAME characters; past a bound the
# upload is refused by name, and a refusal lists at most LISTED names, each cut short.
MAX_EXPORTS, MAX_IMPORTS, MAX_NAME = 512, 256, 256
LISTED, QUOTED = 12, 80


def _listed(names: list[str]) -> str:
    shown = [n if len(n) <= QUOTED else f"{n[:QUOTED]}... ({len(n)} characters)"
             for n in names[:LISTED]]
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(shown) + more


@dataclass(frozen=True)
class ModuleInfo:
    imports: list[str]
    exports: list[str]
    entry: str


def _signature(ty: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(p) for p in ty.params), tuple(str(r) for r in ty.results)


def _fmt(sig: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
    params, results = sig
    return f"({', '.join(params)}) -> ({', '.join(results)})"


def inspect_module(module: wasmtime.Module) -> ModuleInfo:
    """Check a compiled module against the ABI; raise InvalidModule naming every problem."""
    problems: list[str] = []
    exports = {e.name: e.type for e in module.exports}
    imports = [f"{i.module}.{i.name}" for i in module.imports]
    for what, names, bound in (("exports", list(exports), MAX_EXPORTS),
                               ("imports", imports, MAX_IMPORTS)):
        if len(names) > bound:
            problems.append(f"it has {len(names)} {what}; at most {bound} are supported")
        long = [n for n in names if len(n) > MAX_NAME]
        if long:
            problems.append(f"{what} with names longer than {MAX_NAME} characters: "
                            f"{_listed(long)}")
    if problems:  # nothing below lists a bounded number of names before this passes
        raise InvalidModule("module refused: " + "; ".join(problems))
    if not isinstance(exports.get(MEMORY), wasmtime.MemoryType):
        problems.append("it does not export its linear memory as 'memory'")
    missing = [name for name in FUNCTIONS if name not in exports]
    if missing:
        problems.append("missing exports: " + _listed(missing))
    for name, want in FUNCTIONS.items():
        ty = exports.get(name)
        if ty is None:
            continue
        if not isinstance(ty, wasmtime.FuncType):
            problems.append(f"export '{name}' is not a function")
        elif _signature(ty) != want:
            problems.append(f"export '{name}' has signature {_fmt(_signature(ty))}, "
                            f"expected {_fmt(want)}")
    entry = next((e for e in ENTRY_POINTS if e in exports), None)
    if entry is None:
        problems.append("missing export: _start (or _initialize)")
    elif not isinstance(exports[entry], wasmtime.FuncType) or \
            _signature(exports[entry]) != ((), ()):
        problems.append(f"export '{entry}' must be a function taking and returning nothing")
    foreign = [f"{i.module}.{i.name}" for i in module.imports
               if i.module not in WASI_NAMESPACES]
    if foreign:
        problems.append("imports outside WASI (only wasi_snapshot_preview1 and "
                        "wasi_unstable are provided): " + _listed(foreign))
    unknown = [f"{i.module}.{i.name}" for i in module.imports
               if i.module == WASI_NAMESPACES[0] and i.name not in PREVIEW1_FUNCTIONS]
    if unknown:
        problems.append("imports that WASI preview1 does not define: " + _listed(unknown))
    bad_kind = [f"{i.module}.{i.name}" for i in module.imports
                if i.module in WASI_NAMESPACES and not isinstance(i.type, wasmtime.FuncType)]
    if bad_kind:
        problems.append("WASI imports that are not functions: " + _listed(bad_kind))
    if problems:
        raise InvalidModule("module refused: " + "; ".join(problems))
    return ModuleInfo(
        imports=imports,
        exports=sorted(exports),
        entry=entry,  # type: ignore[arg-type]
    )


def runs_code_on_instantiation(wasm: bytes) -> bool:
    """Whether the module has a start section, the only code instantiation runs.

    wasmtime-py hands host-function errors back through one global, so wasm
    may run on one thread per process only; a module without a start
    section can be instantiated on any thread. Reads section headers only:
    `wasm` must be a module that compiled.
    """
    pos = len(WASM_MAGIC) + 4  # the magic and the version
    while pos < len(wasm):
        section = wasm[pos]
        size, pos = _uleb128(wasm, pos + 1)
        if section == START_SECTION:
            return True
        pos += size
    return False


def _uleb128(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def compile_module(engine: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
    """Compile bytes, turning wasmtime's parse errors into a message for the uploader."""
    if not wasm.startswith(WASM_MAGIC):
        raise InvalidModule("module refused: the file is not a WebAssembly binary "
                            "(it does not start with \\0asm)")
    try:
        return wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        first = str(exc).strip().splitlines()
        raise InvalidModule("module refused: not a valid WebAssembly module: "
                            + " ".join(line.strip() for line in first[:3])) from None
