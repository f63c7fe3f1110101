// `verinfer-js verify` against `verinfer verify`: on every command line of test/fixtures/evidence/cases.json
// (real answers of a simulated enclave, with what the Python command printed and returned), the JS command
// prints the same bytes (--json or text) and exits with the same code.
import { strict as assert } from "node:assert";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

const BIN = fileURLToPath(new URL("../bin/verinfer-js.mjs", import.meta.url));
const EVIDENCE = fileURLToPath(new URL("./fixtures/evidence/", import.meta.url));
const { cases } = JSON.parse(readFileSync(`${EVIDENCE}/cases.json`, "utf8"));

function run(args, cwd = EVIDENCE) {
  return spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: "utf8" });
}

test("the evidence covers every verdict and exit code", () => {
  const outputs = cases.map((c) => c.stdout);
  assert.ok(outputs.some((o) => o.includes('"verdict": "VERIFIED"')));
  assert.ok(outputs.some((o) => o.includes('"verdict": "REJECTED"')));
  assert.ok(outputs.some((o) => o.includes('"verdict": "UNPINNED"')));
  assert.ok(outputs.some((o) => o.includes("VERIFIED PREFIX ONLY")));
  assert.deepEqual([...new Set(cases.map((c) => c.exit))].sort(), [0, 1, 2]);
});

for (const c of cases) {
  test(`verify: ${c.name}`, () => {
    const result = run(["verify", ...c.args]);
    assert.equal(result.status, c.exit, result.stderr);
    assert.equal(result.stdout, c.stdout);
    if (c.exit === 2) assert.match(result.stderr, /error: /);
  });
}

test("verify --json: the Python report's shape", () => {
  const c = cases.find((x) => x.name === "completion stream cut short");
  const report = JSON.parse(run(["verify", ...c.args]).stdout);
  assert.deepEqual(Object.keys(report), ["verdict", "verified", "pinned", "simulated", "image_id", "partial", "receipt", "checks"]);
  assert.equal(report.verdict, "VERIFIED");
  assert.match(report.partial, /^the first 8 tokens/);
});

test("usage: no command, an unknown command, verify without arguments, help", () => {
  assert.equal(run([]).status, 2);
  assert.equal(run(["nonsense"]).status, 2);
  const bare = run(["verify"]);
  assert.equal(bare.status, 2);
  assert.match(bare.stderr, /the following arguments are required: response, --attestation/);
  assert.equal(run(["verify", "x.json", "--attestation", "a", "--at", "2030-01-01", "--at-document-time"]).status, 2);
  assert.equal(run(["verify", "x.json", "--attestation", "a", "--max-age", "soon"]).status, 2);
  const help = run(["verify", "--help"]);
  assert.equal(help.status, 0);
  assert.match(help.stdout, /Exit codes: 0 VERIFIED, 1 REJECTED or UNPINNED, 2 usage or I\/O error/);
});

test("option prefixes and --opt=value, as argparse reads them", () => {
  const c = cases.find((x) => x.name === "iris-mlp pinned by image id");
  const args = c.args.map((a) => (a === "--attestation" ? "--attest" : a === "--at-document-time" ? "--at-doc" : a));
  const at = args.indexOf("--image-id");
  args.splice(at, 2, `--image-id=${args[at + 1]}`);
  const result = run(["verify", ...args]);
  assert.equal(result.status, 0, result.stderr);
  assert.equal(result.stdout, c.stdout);
});

test("attest: delegated to bin/attest.mjs", { skip: !existsSync(fileURLToPath(new URL("../bin/attest.mjs", import.meta.url))) }, () => {
  const result = run(["attest", "verify", "attestation.json", "--root", "root.pem", "--at-document-time", "--json"]);
  assert.equal(result.status, 0, result.stderr);
  assert.equal(JSON.parse(result.stdout).simulated, true);
});
