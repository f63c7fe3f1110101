// The explorer page: wires check.mjs to the DOM. Bundled with @verinfer/verify into one classic script
// (verinfer/explorer/explorer.js, `npm run build:explorer`) so the page also opens from a file.
import { pyJsonDumps, verifyInference } from "../src/index.mjs";
import { checkEnclave, drawNonce, parsePins, rootFrom, verifyAnswer } from "./check.mjs";
import { canvasToMnist, setUpDrawing } from "./digit.mjs";

const IRIS_SPECIES = ["setosa", "versicolor", "virginica"];
const $ = (id) => document.getElementById(id);

/** What the page has checked, and the timings a bench reads (window.verinferExplorer). */
const state = {
  check: null,
  root: null,
  chain: null,
  lastExchange: null, // {request, response} of the last inference, for re-verification
  timings: { verdictMs: null, lastReceiptMs: null },
};

function settings() {
  const chain = $("rpc").value.trim() && $("contract").value.trim() ? { rpc: $("rpc").value.trim(), contract: $("contract").value.trim() } : null;
  return {
    enclave: $("enclave").value.trim().replace(/\/+$/, ""),
    root: $("root-choice").value === "aws" ? "aws" : $("root-pem").value,
    pins: { pcrs: { 0: $("pcr0").value, 1: $("pcr1").value, 2: $("pcr2").value }, imageIds: [$("image-id").value] },
    chain,
  };
}

async function getJson(url) {
  const answer = await fetch(url, { cache: "no-store" });
  const text = await answer.text();
  if (!answer.ok) throw new Error(`${url} answered HTTP ${answer.status}: ${text.slice(0, 200)}`);
  return JSON.parse(text);
}

// --- rendering ---

function statusCell(status) {
  const cell = document.createElement("td");
  cell.className = `status ${status}`;
  cell.textContent = { pass: "✔ pass", fail: "✘ FAIL", skipped: "– skipped", pending: "…" }[status] ?? status;
  return cell;
}

function renderRows(tbody, rows) {
  tbody.replaceChildren(
    ...rows.map((rule) => {
      const tr = document.createElement("tr");
      tr.dataset.rule = rule.name;
      tr.dataset.status = rule.status;
      const name = document.createElement("td");
      name.className = "rule";
      name.textContent = rule.name;
      const detail = document.createElement("td");
      detail.className = "detail";
      if (rule.what) {
        const what = document.createElement("div");
        what.className = "what";
        what.textContent = rule.what;
        detail.append(what);
      }
      const said = document.createElement("div");
      said.textContent = rule.detail;
      detail.append(said);
      tr.append(name, statusCell(rule.status), detail);
      return tr;
    }),
  );
}

function renderVerdict(element, verdict, simulated, failed) {
  element.dataset.verdict = verdict;
  element.replaceChildren();
  const word = document.createElement("span");
  word.className = "word";
  word.textContent = verdict;
  element.append(word);
  if (simulated) {
    const badge = document.createElement("span");
    badge.className = "simulated";
    badge.textContent = "SIMULATED attestation: not hardware";
    element.append(badge);
  }
  if (failed.length) {
    const why = document.createElement("span");
    why.className = "why";
    why.textContent = `failed: ${failed.join(", ")}`;
    element.append(why);
  }
}

function renderModels(models) {
  $("models-body").replaceChildren(
    ...models.map((m) => {
      const tr = document.createElement("tr");
      for (const text of [m.name, m.version, m.task, m.modelHash, m.description]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    }),
  );
}

function showError(element, message) {
  element.dataset.verdict = "ERROR";
  element.textContent = message;
}

// --- the enclave check ---

async function runCheck() {
  const verdict = $("verdict");
  verdict.dataset.verdict = "CHECKING";
  verdict.textContent = "checking…";
  state.check = null;
  $("infer-section").hidden = true;
  let config;
  try {
    config = settings();
    state.root = rootFrom(config.root);
    config.pins = parsePins(config.pins);
  } catch (error) {
    showError(verdict, `settings: ${error.message}`);
    return;
  }
  state.chain = config.chain;
  const nonce = drawNonce();
  let attestationJson;
  let modelsJson;
  try {
    [attestationJson, modelsJson] = await Promise.all([
      getJson(`${config.enclave}/attestation?nonce=${nonce}`),
      getJson(`${config.enclave}/models`),
    ]);
  } catch (error) {
    showError(verdict, `cannot reach the enclave: ${error.message} (is it serving with --cors-origin?)`);
    return;
  }
  const check = await checkEnclave({ attestationJson, modelsJson, nonce, root: state.root, pins: config.pins, chain: config.chain });
  state.check = check;
  const rules = [...check.rules.values()];
  renderRows($("rules-body"), rules);
  renderVerdict(verdict, check.verdict, check.simulated, check.failed.map((r) => r.name));
  $("enclave-address").textContent = check.enclave ?? "";
  $("image-id-shown").textContent = check.imageId ?? "";
  renderModels(check.models);
  $("infer-section").hidden = check.verdict === "REJECTED";
  state.timings.verdictMs = performance.now();
  document.body.dataset.checked = "true";
}

// --- inference ---

function requestId() {
  return `0x${drawNonce()}`;
}

async function infer(request, describe) {
  const out = $("answer");
  out.textContent = "running…";
  $("receipt-verdict").dataset.verdict = "CHECKING";
  $("receipt-verdict").textContent = "";
  $("receipt-body").replaceChildren();
  $("anchoring").textContent = "";
  const body = JSON.stringify(request);
  let text;
  try {
    const answer = await fetch(`${settings().enclave}/infer`, { method: "POST", headers: { "content-type": "application/json" }, body });
    text = await answer.text();
    if (!answer.ok) throw new Error(`HTTP ${answer.status}: ${text.slice(0, 300)}`);
  } catch (error) {
    out.textContent = `inference failed: ${error.message}`;
    showError($("receipt-verdict"), "no answer to verify");
    return;
  }
  state.lastExchange = { request: body, response: text };
  try {
    out.textContent = describe(JSON.parse(text)); // for showing only: the receipt check reads the exact text
  } catch (error) {
    out.textContent = `unreadable answer: ${error.message}`;
  }
  await showReceipt(text, body, $("receipt-verdict"), $("receipt-body"), $("anchoring"));
}

async function showReceipt(responseText, requestText, verdictElement, tbody, anchoringElement) {
  const started = performance.now();
  const { report, anchoring } = await verifyAnswer(state.check, responseText, requestText, { root: state.root, chain: state.chain });
  state.timings.lastReceiptMs = performance.now() - started;
  renderRows(tbody, report.checks);
  renderVerdict(verdictElement, report.verdict, report.simulated, report.checks.filter((c) => c.status === "fail").map((c) => c.name));
  if (anchoringElement) anchoringElement.textContent = anchoring ?? "no contract configured: anchoring not looked up";
  return report;
}

function outputsByName(answer) {
  return new Map((answer.outputs ?? []).map((o) => [o.name, o.data]));
}

function describeDigit(answer) {
  const outputs = outputsByName(answer);
  const digit = outputs.get("digit")?.[0];
  return `${answer.model}: digit ${digit}`;
}

function describeIris(answer) {
  const outputs = outputsByName(answer);
  if (outputs.has("label")) {
    const label = Number(outputs.get("label")[0]);
    const p = outputs.get("probabilities") ?? [];
    return `${answer.model}: ${IRIS_SPECIES[label] ?? label} (p = ${Number(p[label] ?? 0).toFixed(3)})`;
  }
  return `${answer.model}: petal width ${Number(outputs.get("petal_width")?.[0]).toFixed(3)} cm`;
}

async function classifyDigit() {
  let pixels;
  try {
    pixels = canvasToMnist($("digit"));
  } catch (error) {
    $("answer").textContent = error.message;
    return;
  }
  const request = {
    model: "mnist-lenet",
    request_id: requestId(),
    inputs: [{ name: "image", datatype: "FP32", shape: [1, 1, 28, 28], data: pixels }],
  };
  await infer(request, describeDigit);
}

async function classifyIris() {
  const model = $("iris-model").value;
  const fields = model === "iris-ols" ? ["sepal-length", "sepal-width", "petal-length"] : ["sepal-length", "sepal-width", "petal-length", "petal-width"];
  const values = fields.map((id) => Number($(id).value));
  if (values.some((v) => !Number.isFinite(v))) {
    $("answer").textContent = "every measurement must be a number (cm)";
    return;
  }
  const request = {
    model,
    request_id: requestId(),
    inputs: [{ name: "features", datatype: "FP32", shape: [1, values.length], data: values }],
  };
  await infer(request, describeIris);
}

// --- pasted or dropped answers ---

async function verifyPasted() {
  const verdict = $("pasted-verdict");
  const responseText = $("paste-response").value.trim();
  const requestText = $("paste-request").value.trim() || null;
  const attestationText = $("paste-attestation").value.trim();
  verdict.dataset.verdict = "CHECKING";
  verdict.textContent = "";
  $("pasted-body").replaceChildren();
  $("pasted-anchoring").textContent = "";
  if (!responseText) {
    showError(verdict, "paste or drop a response.json first");
    return;
  }
  try {
    if (attestationText) {
      // Offline, like `verinfer verify`: the pasted document is checked against the page's root and pins.
      const config = settings();
      const pins = parsePins(config.pins);
      const report = await verifyInference(responseText, attestationText, {
        policy: { root: rootFrom(config.root), expectedPcrs: pins.expectedPcrs },
        imageIds: pins.imageIds,
        request: requestText,
      });
      renderRows($("pasted-body"), report.checks);
      renderVerdict(verdict, report.verdict, report.simulated, report.checks.filter((c) => c.status === "fail").map((c) => c.name));
    } else if (state.check && state.check.attested) {
      await showReceipt(responseText, requestText, verdict, $("pasted-body"), $("pasted-anchoring"));
    } else {
      showError(verdict, "check an enclave first, or paste its GET /attestation JSON too");
    }
  } catch (error) {
    showError(verdict, `cannot verify: ${error.message}`);
  }
}

/** A dropped file goes where it fits: an answer has a receipt, a request has inputs or messages. */
async function dropFiles(event) {
  event.preventDefault();
  for (const file of event.dataTransfer?.files ?? []) {
    const text = await file.text();
    let value;
    try {
      value = JSON.parse(text);
    } catch {
      continue;
    }
    if (value && (value.receipt || value.parameters?.receipt)) $("paste-response").value = text;
    else if (value && value.document) $("paste-attestation").value = text;
    else $("paste-request").value = text;
  }
}

// --- configuration: config.json from `verinfer explorer`, then the URL's #fragment ---

async function loadConfig() {
  let config = {};
  if (location.protocol.startsWith("http")) {
    try {
      const answer = await fetch("config.json", { cache: "no-store" });
      if (answer.ok) config = await answer.json();
    } catch {
      config = {};
    }
  }
  for (const [key, value] of new URLSearchParams(location.hash.slice(1))) config[key] = value;
  const fields = { enclave: "enclave", rpc: "rpc", contract: "contract", imageId: "image-id", pcr0: "pcr0", pcr1: "pcr1", pcr2: "pcr2" };
  for (const [key, id] of Object.entries(fields)) if (config[key]) $(id).value = config[key];
  if (config.rootPem) {
    $("root-choice").value = "pem";
    $("root-pem").value = config.rootPem;
  }
  $("root-pem").hidden = $("root-choice").value === "aws";
  return config;
}

/** For bench/bench_browser.py: verify the last answer `n` times; resolves milliseconds per receipt. */
async function benchReceipts(n) {
  const { request, response } = state.lastExchange;
  const started = performance.now();
  for (let i = 0; i < n; i += 1) {
    const { report } = await verifyAnswer(state.check, response, request, { root: state.root });
    if (!report.ok) throw new Error(pyJsonDumps(report.toJson().checks.map((c) => c.name)));
  }
  return (performance.now() - started) / n;
}

async function main() {
  globalThis.verinferExplorer = { state, timings: state.timings, benchReceipts, runCheck };
  setUpDrawing($("digit"));
  $("check").addEventListener("click", runCheck);
  $("classify-digit").addEventListener("click", classifyDigit);
  $("clear-digit").addEventListener("click", () => setUpDrawing($("digit"), { clear: true }));
  $("classify-iris").addEventListener("click", classifyIris);
  $("verify-pasted").addEventListener("click", verifyPasted);
  $("root-choice").addEventListener("change", () => {
    $("root-pem").hidden = $("root-choice").value === "aws";
  });
  const drop = $("drop-zone");
  drop.addEventListener("dragover", (event) => event.preventDefault());
  drop.addEventListener("drop", dropFiles);
  const config = await loadConfig();
  document.body.dataset.ready = "true";
  if (config.enclave && (config.check === true || config.check === "1")) await runCheck();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
else main();
