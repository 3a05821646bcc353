// Renders every case of jinja_cases.json with @huggingface/jinja (the engine transformers.js uses) and prints
// {"cases": [{"name", "output"} or {"name", "error"}]} as JSON: the reference the C++ engine is compared with.
// Usage: node jinja_reference.mjs <node_modules dir> [golden.json]
// With a golden file it compares instead of printing, and exits 1 on any difference (so the goldens cannot
// drift from the pinned version); it exits 77 (skip) when the package is missing.
import { readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const kPinnedVersion = "0.5.13";
const here = dirname(fileURLToPath(import.meta.url));
const [modules, golden] = process.argv.slice(2);
const pkgDir = join(modules ?? "", "@huggingface", "jinja");
if (!modules || !existsSync(join(pkgDir, "package.json"))) {
  console.error(`@huggingface/jinja not found under ${modules} (tools/setup.sh installs it)`);
  // Under CI a missing reference fails the run instead of skipping it.
  process.exit(process.env.CI === "true" ? 1 : 77);
}
const version = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8")).version;
if (version !== kPinnedVersion) {
  console.error(`@huggingface/jinja is ${version}; the goldens come from ${kPinnedVersion}`);
  process.exit(1);
}
const { Template } = await import(pathToFileURL(join(pkgDir, "dist", "index.js")).href);

const { cases } = JSON.parse(readFileSync(join(here, "jinja_cases.json"), "utf8"));
const sources = new Map();
const results = [];
for (const c of cases) {
  if (!sources.has(c.template)) {
    sources.set(c.template, readFileSync(join(here, "templates", `${c.template}.jinja`), "utf8"));
  }
  try {
    results.push({ name: c.name, output: new Template(sources.get(c.template)).render(c.context) });
  } catch (e) {
    results.push({ name: c.name, error: String(e.message ?? e) });
  }
}
const text = JSON.stringify({ version, cases: results }, null, 1) + "\n";
if (!golden) {
  process.stdout.write(text);
} else if (readFileSync(golden, "utf8") !== text) {
  console.error(`${golden} differs from what @huggingface/jinja ${version} renders now; regenerate it with\n` +
                `  node jinja_reference.mjs <node_modules> > jinja_golden.json`);
  process.exit(1);
} else {
  console.log(`${results.length} cases match ${golden}`);
}
