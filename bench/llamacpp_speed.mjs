// llama.cpp's own decode speed on a GGUF file, through npm's node-llama-cpp (its CPU build, the model mapped
// with mmap as llama.cpp does by default): evaluates the prompt's token ids, then generates greedily.
// Usage: NODE_PATH=.../node_modules node llamacpp_speed.mjs MODEL.gguf N_NEW THREADS < ids.txt
// Prints one JSON line: prompt tokens, prefill and decode seconds, decode tokens/s, the generated ids.
import { createRequire } from "module";
import fs from "fs";
const require = createRequire(process.env.NODE_PATH + "/");
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));
const [modelPath, nNewArg, threadsArg] = process.argv.slice(2);
const nNew = Number(nNewArg);
const threads = Number(threadsArg || 2);
const ids = fs.readFileSync(0, "utf8").trim().split(",").map(Number);
const llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error, build: "never" });
const t0 = performance.now();
const model = await llama.loadModel({ modelPath, useMmap: true, useMlock: false });
const ctx = await model.createContext({ contextSize: ids.length + nNew + 8, batchSize: 512, threads });
const seq = ctx.getSequence();
const tLoad = performance.now();
const out = [];
let tFirst = null;
for await (const token of seq.evaluate(ids, { temperature: 0 })) {
  if (tFirst === null) tFirst = performance.now();
  out.push(token);
  if (out.length >= nNew) break;
}
const tEnd = performance.now();
// The first token comes out of the prompt's evaluation; the decode rate counts the tokens after it.
const decodeS = (tEnd - tFirst) / 1000;
console.log(JSON.stringify({
  prompt_tokens: ids.length, load_s: (tLoad - t0) / 1000, prefill_s: (tFirst - tLoad) / 1000,
  decode_s: decodeS, tokens_per_second: (out.length - 1) / decodeS, tokens: out,
}));
await ctx.dispose();
await model.dispose();
