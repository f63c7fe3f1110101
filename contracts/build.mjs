// Compiles contracts/src and contracts/test with the pinned solc-js and writes relay/artifacts/*.json
// (ABI + bytecode). `node contracts/build.mjs --check` compiles and exits 1 if the committed artifacts differ.
import { readFileSync, writeFileSync, readdirSync, statSync, mkdirSync, existsSync } from "node:fs";
import { join, relative, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const solc = require("solc");
const here = dirname(fileURLToPath(import.meta.url));
const artifactsDir = join(here, "..", "relay", "artifacts"); // package data of `relay`
const check = process.argv.includes("--check");

function solidityFiles(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return solidityFiles(path);
    return name.endsWith(".sol") ? [path] : [];
  });
}

const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};
const sources = {};
for (const file of [...solidityFiles(join(here, "src")), ...solidityFiles(join(here, "test"))].sort()) {
  sources[relative(here, file)] = { content: readFileSync(file, "utf8") };
}
// Imports outside contracts/ resolve only to pinned npm packages (package.json): "@openzeppelin/..." is read
// from node_modules, so the build sees exactly the version in package-lock.json.
const nodeModules = join(here, "..", "node_modules");
function findImport(path) {
  if (!path.startsWith("@openzeppelin/contracts/")) return { error: `import outside contracts/: ${path}` };
  const file = join(nodeModules, path);
  if (!existsSync(file)) return { error: `not installed (run npm install): ${path}` };
  return { contents: readFileSync(file, "utf8") };
}
const input = JSON.stringify({ language: "Solidity", sources, settings });
const output = JSON.parse(solc.compile(input, { import: findImport }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
// Warnings about the pinned packages' own sources are theirs to fix, not ours: only ours are shown.
const ours = (e) => e.severity === "error" || !e.sourceLocation || e.sourceLocation.file in sources;
for (const message of (output.errors || []).filter(ours)) console.error(message.formattedMessage);
if (errors.length) process.exit(2);

let stale = [];
if (!check) mkdirSync(artifactsDir, { recursive: true });
for (const [sourceName, contracts] of Object.entries(output.contracts)) {
  if (!(sourceName in sources)) continue; // imported packages (OpenZeppelin): compiled in, no artifacts of their own
  for (const [contractName, compiled] of Object.entries(contracts)) {
    if (!compiled.evm.bytecode.object) continue; // interfaces and libraries with only internal functions
    const artifact = {
      contractName,
      sourceName,
      compiler: { version: solc.version(), settings: { optimizer: settings.optimizer, evmVersion: settings.evmVersion } },
      abi: compiled.abi,
      bytecode: "0x" + compiled.evm.bytecode.object,
      deployedBytecode: "0x" + compiled.evm.deployedBytecode.object,
    };
    const text = JSON.stringify(artifact, null, 2) + "\n";
    const path = join(artifactsDir, `${contractName}.json`);
    if (check) {
      if (!existsSync(path) || readFileSync(path, "utf8") !== text) stale.push(relative(here, path));
    } else {
      writeFileSync(path, text);
    }
  }
}
if (check && stale.length) {
  console.error(`stale artifacts (run make contracts): ${stale.join(", ")}`);
  process.exit(1);
}
console.log(check ? "artifacts are up to date" : `wrote artifacts with solc ${solc.version()}`);
