// A Scailable-ABI runner for the browser, written for the cross-origin test:
// it does in WebAssembly what wasmq's worker does in wasmtime (DESIGN.md,
// "The ABI"): _start(), p = malloc_buffer(len + 1), write the input and a NUL
// at p, pred(), read get_out_len() bytes at get_out_loc(), free both buffers.
"use strict";

class WasiExit extends Error {
  constructor(code) {
    super(`proc_exit(${code})`);
    this.code = code;
  }
}

// A minimal WASI: exit, and stdout/stderr kept in `logs`. Everything else
// answers ENOSYS, as a sandbox with no files, clock or environment would.
function wasiShim(memory, logs) {
  const ENOSYS = 52;
  const shim = {
    proc_exit(code) {
      throw new WasiExit(code);
    },
    fd_write(fd, iovs, iovsLen, nwrittenPtr) {
      const view = new DataView(memory().buffer);
      let written = 0;
      for (let i = 0; i < iovsLen; i++) {
        const ptr = view.getUint32(iovs + i * 8, true);
        const len = view.getUint32(iovs + i * 8 + 4, true);
        logs.push([fd, new TextDecoder().decode(new Uint8Array(memory().buffer, ptr, len))]);
        written += len;
      }
      view.setUint32(nwrittenPtr, written, true);
      return 0;
    },
  };
  return (name) => shim[name] || (() => ENOSYS);
}

async function runScailable(wasmUrl, input) {
  const response = await fetch(wasmUrl);
  if (!response.ok) throw new Error(`GET ${wasmUrl}: HTTP ${response.status}`);
  const module = await WebAssembly.compile(await response.arrayBuffer());
  let memory = null;
  const logs = [];
  const wasi = wasiShim(() => memory, logs);
  const imports = {};
  for (const imp of WebAssembly.Module.imports(module)) {
    if (!["wasi_snapshot_preview1", "wasi_unstable"].includes(imp.module) ||
        imp.kind !== "function") {
      throw new Error(`the module imports ${imp.module}.${imp.name}, which is not WASI`);
    }
    (imports[imp.module] ??= {})[imp.name] = wasi(imp.name);
  }
  const instance = await WebAssembly.instantiate(module, imports);
  const abi = instance.exports;
  memory = abi.memory;
  try {
    (abi._start || abi._initialize)();
  } catch (err) {
    if (!(err instanceof WasiExit && err.code === 0)) throw err;
  }
  const data = new TextEncoder().encode(input);
  const p = abi.malloc_buffer(data.length + 1);
  const buffer = new Uint8Array(memory.buffer, p, data.length + 1);  // after any growth
  buffer.set(data);
  buffer[data.length] = 0;
  const rc = abi.pred();
  if (rc !== 0) throw new Error(`pred() returned ${rc}`);
  const loc = abi.get_out_loc();
  const out = new Uint8Array(memory.buffer, loc, abi.get_out_len()).slice();
  abi.free_buffer(p);
  abi.free_buffer(loc);
  return { output: new TextDecoder().decode(out), logs };
}
