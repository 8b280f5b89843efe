// Writes ../vendor-lock.json: the pinned packages (from package-lock.json) and the sha256 of
// each vendored file. Run by build.sh.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";

const lock = JSON.parse(readFileSync("package-lock.json", "utf8"));
const packages = {};
for (const name of ["@hpke/core", "@hpke/common", "esbuild"]) {
  const entry = lock.packages[`node_modules/${name}`];
  packages[name] = { version: entry.version, integrity: entry.integrity };
}
const files = {};
for (const file of ["hpke-core-1.9.0.js", "LICENSE-hpke-js"]) {
  files[file] = createHash("sha256").update(readFileSync(`../${file}`)).digest("hex");
}
const out = { packages, files };
writeFileSync("../vendor-lock.json", JSON.stringify(out, null, 2) + "\n");
