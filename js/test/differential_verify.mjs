// Differential driver: verify every case of a directory with verinfer-js's `verify` (in this one process)
// and print one JSON line per case, for tests/test_js_verify_differential.py to compare with Python's.
//
//   node test/differential_verify.mjs DIR
//
// DIR holds one folder per case, each with args.json (the arguments after "verify", paths relative to the
// folder or absolute). Output lines: {"id", "code", "verdict", "checks": [[name, status], ...]} or
// {"id", "crash": message} where the Python command would raise.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseJson } from "../src/json.mjs";
import { runVerify } from "../src/verify_cli.mjs";

const dir = process.argv[2];
if (!dir) {
  // `node --test test/` runs every .mjs under test/, this one too: without DIR there is nothing to do
  process.stderr.write("usage: node test/differential_verify.mjs DIR (run by tests/test_js_verify_differential.py)\n");
  process.exit(0);
}
const lines = [];
for (const id of readdirSync(dir).sort()) {
  const cwd = join(dir, id);
  let args;
  try {
    args = JSON.parse(readFileSync(join(cwd, "args.json"), "utf8"));
  } catch {
    continue;
  }
  try {
    const result = await runVerify(args, { cwd });
    const line = { id, code: result.code, verdict: null, checks: [] };
    if (result.report) {
      line.verdict = result.report.verdict;
      line.checks = result.report.checks.map((c) => [c.name, c.status]);
    }
    if (result.code !== 2 && args.includes("--json")) {
      // the --json text must parse and agree with the report
      const shown = parseJson(result.stdout);
      if (shown.verdict !== line.verdict) line.inconsistent = true;
    }
    lines.push(JSON.stringify(line));
  } catch (error) {
    lines.push(JSON.stringify({ id, crash: String(error?.message ?? error) }));
  }
}
process.stdout.write(lines.join("\n") + "\n");
