// onnxruntime-web (its WebAssembly build, one thread, SIMD) running a model under node,
// one inference per line read on stdin, so the bench can interleave it with wasmq's:
//   node --no-liftoff bench/ort_web.mjs <ort.node.min.mjs> <model.onnx> <input.bin> <dims,...>
// Prints "ready" once the session is made and warmed up (two runs), then for each line in
// one line with that run's milliseconds.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";

const [ortPath, modelPath, inputPath, dimsText] = process.argv.slice(2);
const ort = await import(ortPath);
ort.env.wasm.numThreads = 1;
ort.env.wasm.simd = true;
const session = await ort.InferenceSession.create(readFileSync(modelPath),
                                                  { executionProviders: ["wasm"] });
const raw = readFileSync(inputPath);
const data = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", data,
                                                        dimsText.split(",").map(Number)) };
for (let i = 0; i < 2; i++) await session.run(feeds);
console.log("ready");
for await (const _ of createInterface({ input: process.stdin })) {
  const t0 = performance.now();
  await session.run(feeds);
  console.log(String(performance.now() - t0));
}
