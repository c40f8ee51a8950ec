// onnxruntime-web (its WebAssembly build, one thread, SIMD) timing a model under node:
// node bench/ort_web.mjs <ort.node.min.mjs> <model.onnx> <input.bin> <dims,comma,separated> <reps>
// Prints one JSON line: {"ms": [per inference, after two warm-up runs], "first": [...]}.
import { readFileSync } from "node:fs";

const [ortPath, modelPath, inputPath, dimsText, repsText] = process.argv.slice(2);
const ort = await import(ortPath);
ort.env.wasm.numThreads = 1;
ort.env.wasm.simd = true;
const session = await ort.InferenceSession.create(readFileSync(modelPath),
                                                  { executionProviders: ["wasm"] });
const raw = readFileSync(inputPath);
const data = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
const dims = dimsText.split(",").map(Number);
const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", data, dims) };
let first = null;
for (let i = 0; i < 2; i++) {
  const out = await session.run(feeds);
  first = first || Array.from(out[session.outputNames[0]].data.slice(0, 5));
}
const ms = [];
for (let i = 0; i < Number(repsText); i++) {
  const t0 = performance.now();
  await session.run(feeds);
  ms.push(performance.now() - t0);
}
console.log(JSON.stringify({ ms, first }));
