#!/usr/bin/env node
// Compiles contracts/DiscoFLTask.sol with solc-js (standard-JSON API; no native solc
// is needed) and writes the artifact the Python package loads: ABI, bytecode, the
// compiler version and the sha256 of the source, so that a test can tell when the
// committed artifact is stale.
//   node contracts/compile.cjs            write the artifact
//   node contracts/compile.cjs --stdout   print it instead (the staleness test)
const fs = require("fs");
const path = require("path");
const crypto = require("crypto");
const solc = require("solc");

const NAME = "DiscoFLTask";
const srcPath = path.join(__dirname, `${NAME}.sol`);
const outPath = path.join(__dirname, "..", "discofl_p2p", "chain", "artifacts", `${NAME}.json`);
const source = fs.readFileSync(srcPath, "utf8");

const input = {
  language: "Solidity",
  sources: { [`${NAME}.sol`]: { content: source } },
  settings: {
    optimizer: { enabled: true, runs: 1000 },
    viaIR: true,
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
if (errors.length) process.exit(1);

const c = output.contracts[`${NAME}.sol`][NAME];
const artifact = {
  contractName: NAME,
  compiler: `solc-js ${solc.version()}`,
  settings: input.settings,
  sourceSha256: crypto.createHash("sha256").update(source).digest("hex"),
  abi: c.abi,
  bytecode: "0x" + c.evm.bytecode.object,
};
const text = JSON.stringify(artifact, null, 1) + "\n";
if (process.argv.includes("--stdout")) process.stdout.write(text);
else fs.writeFileSync(outPath, text);
