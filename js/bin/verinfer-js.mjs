#!/usr/bin/env node
// verinfer-js: verify verinfer enclaves from the shell, with the Python CLI's verdicts and exit codes.
//   verinfer-js verify RESPONSE --attestation A [--request R] [--manifest M] [pins] [--json]
//   verinfer-js attest inspect|verify ...
// Exit codes: 0 verified, 1 rejected (or unpinned), 2 usage or I/O error.

const USAGE = `usage: verinfer-js {verify,attest} ...

  verify   verify an inference receipt or a completion offline against an attestation and a pinned image
  attest   inspect and verify Nitro attestation documents
`;

async function main(argv) {
  const [command, ...rest] = argv;
  if (command === "verify") {
    const { verifyCommand } = await import("../src/verify_cli.mjs");
    return verifyCommand(rest);
  }
  if (command === "attest") {
    const { attestCommand } = await import("./attest.mjs");
    return attestCommand(rest);
  }
  if (command === "-h" || command === "--help") {
    process.stdout.write(USAGE);
    return 0;
  }
  process.stderr.write(USAGE + (command ? `verinfer-js: error: unknown command ${JSON.stringify(command)}\n` : ""));
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    process.stderr.write(`verinfer-js: ${error?.stack ?? error}\n`);
    process.exitCode = 1;
  },
);
