// What a dApp front-end does before it trusts an answer (docs/JS_VERIFIER.md): check the enclave once, with
// its own nonce, against the root and the images it approves, then verify every answer against that check.
// Run it: node js/examples/dapp.mjs URL --image-id 0x... [--root root.pem]
import { TrustedRoot, b64decodeStrict, hex0x, imageId, verifyAttestation, verifyInference } from "@verinfer/verify";

export async function connect(enclaveUrl, { root = TrustedRoot.aws(), imageIds }) {
  const nonce = crypto.getRandomValues(new Uint8Array(32));
  const attestation = await (await fetch(`${enclaveUrl}/attestation?nonce=${hex0x(nonce).slice(2)}`)).json();
  const manifest = await (await fetch(`${enclaveUrl}/models`)).json();
  const verified = await verifyAttestation(b64decodeStrict(attestation.document), { root, expectedNonce: nonce });
  const image = hex0x(imageId(verified.pcrs));
  if (!imageIds.includes(image)) throw new Error(`the enclave runs image ${image}, which is not approved`);

  return async function infer(request) {
    const body = JSON.stringify(request);
    const answer = await fetch(`${enclaveUrl}/infer`, { method: "POST", headers: { "content-type": "application/json" }, body });
    const text = await answer.text();
    const report = await verifyInference(text, attestation, { policy: { root }, request: body, manifest, imageIds, verified });
    if (!report.verified) {
      const failed = report.checks.filter((c) => c.status === "fail").map((c) => `${c.name}: ${c.detail}`);
      throw new Error(`answer refused (${report.verdict}): ${failed.join("; ")}`);
    }
    return { answer: JSON.parse(text), receipt: report.receipt, simulated: report.simulated };
  };
}

async function main(args) {
  const option = (name) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
  const { readFileSync } = await import("node:fs");
  const root = option("--root") ? TrustedRoot.fromPem(readFileSync(option("--root"), "utf8")) : TrustedRoot.aws();
  const infer = await connect(args[0], { root, imageIds: [option("--image-id")] });
  const { answer, receipt, simulated } = await infer({ model: "iris-mlp", inputs: [[6.7, 3.0, 5.2, 2.3]] });
  const label = answer.outputs.find((o) => o.name === "label").data[0];
  console.log(`iris-mlp says ${label}: VERIFIED${simulated ? " [SIMULATED]" : ""}, signed by ${receipt.enclave}`);
}

if (import.meta.url === `file://${process.argv[1]}`) await main(process.argv.slice(2));
