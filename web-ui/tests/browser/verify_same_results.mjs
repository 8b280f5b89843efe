// The attestation verifier in Chromium, driven by verifier-wasm/tests/browser_verify.rs,
// which serves the page, verify.js, verifier.wasm and a simulated box over local HTTP.
//
// 1. verifyBox() on a fresh page (the verifier not yet loaded: the first visit's timing);
//    then the same requests as the Rust test go through verify.js' runVerifier and the wasm,
//    and the result strings are written to OUT_DIR/results.json for Rust to compare byte
//    for byte.
// 2. verifyBox() against the simulated box: passes with acceptSimulated, fails without;
//    pins measurements.json on first use; after the box is "upgraded" (new measurements and
//    new quotes), refuses the change until confirmChange accepts it.
// 3. renderChecks() draws with text only: markup in a check's detail stays text.
// 4. Timing: verifyBox() RUNS times; the figures go to OUT_DIR/timing.json.
//
// Environment: CLOISTER_URL (http://127.0.0.1:PORT), REQUESTS (a JSON file: [[name, request]]),
// OUT_DIR, RUNS (default 30), CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const base = process.env.CLOISTER_URL;
const outDir = process.env.OUT_DIR;
const runs = Number(process.env.RUNS || "30");
const requests = JSON.parse(readFileSync(process.env.REQUESTS, "utf8"));
mkdirSync(outDir, { recursive: true });

let failed = false;
function check(name, ok, detail) {
  if (!ok) failed = true;
  console.log((ok ? "ok   " : "FAIL ") + name + (detail === undefined ? "" : " (" + detail + ")"));
}
const failedNames = (result) => result.checks.filter((c) => !c.ok).map((c) => c.name).join(",");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("console", (message) => console.log("console: " + message.text()));
  page.on("pageerror", (error) => check("no page error", false, error.message));
  await page.goto(base + "/verify.html");
  await page.waitForFunction(() => window.verifierReady === true, null, { timeout: 20000 });

  // 1. The whole flow against the simulated box, starting from a cold page.
  const first = await page.evaluate(() => window.verifier.verifyBox({ acceptSimulated: true }));
  check("a simulated box verifies when simulation is accepted", first.ok, first.error || failedNames(first));
  check("its measurements are pinned on first use", first.pin && first.pin.status === "first-use", first.pin && first.pin.status);
  check("the report says SIMULATED", first.report && first.report.simulated === true);
  check("the box's simulated header is seen", first.simulated_header === "SIMULATED, not confidential", first.simulated_header);
  check("the pin check comes first, then the eleven verifier checks", first.checks.length === 12 && first.checks[0].name === "measurements_pin", first.checks.map((c) => c.name).join(","));
  check("the timing is recorded", first.timing.total_ms > 0 && first.timing.verify_ms > 0 && first.timing.fetch_ms > 0, JSON.stringify(first.timing));
  check("the first visit loads the verifier", first.timing.wasm_load_ms > 0, first.timing.wasm_load_ms);

  // Same inputs, same results.
  const results = await page.evaluate(async (list) => {
    const exports = await window.verifier.loadVerifier();
    return list.map(([name, request]) => [name, window.verifier.runVerifier(exports, request)]);
  }, requests);
  writeFileSync(join(outDir, "results.json"), JSON.stringify(results));
  check("the wasm verifier answered every request", results.length === requests.length, results.length);

  const refused = await page.evaluate(() => window.verifier.verifyBox({ acceptSimulated: false }));
  check("without acceptSimulated the simulation root is refused", !refused.ok && failedNames(refused) === "quote_signature,tcb_status", failedNames(refused));

  const again = await page.evaluate(() => window.verifier.verifyBox({ acceptSimulated: true }));
  check("the second visit finds the same pin", again.ok && again.pin.status === "same", again.pin && again.pin.status);

  // The box is upgraded: a new measurements.json, and quotes that show the new registers.
  const upgraded = await page.evaluate(async () => (await fetch("/test/upgrade", { method: "POST" })).status);
  check("the box was upgraded", upgraded === 204, upgraded);
  const changed = await page.evaluate(() => window.verifier.verifyBox({ acceptSimulated: true }));
  check("changed measurements are refused without the user's acceptance", !changed.ok && changed.pin.status === "changed-refused", changed.pin && changed.pin.status);
  check("the refusal names the pin and the register that changed", failedNames(changed) === "measurements_pin,rtmr2", failedNames(changed));
  check("the warning is loud", /CHANGED/.test(changed.checks[0].detail), changed.checks[0].detail);
  const accepted = await page.evaluate(() => window.verifier.verifyBox({ acceptSimulated: true, confirmChange: async ({ pinned, served }) => pinned.sha256 !== served.sha256 }));
  check("accepting the change verifies against the new measurements", accepted.ok && accepted.pin.status === "changed-accepted", accepted.error || failedNames(accepted));
  const afterwards = await page.evaluate(() => window.verifier.verifyBox({ acceptSimulated: true }));
  check("the accepted measurements are the new pin", afterwards.ok && afterwards.pin.status === "same", afterwards.pin && afterwards.pin.status);

  const missing = await page.evaluate(() => window.verifier.verifyBox({ acceptSimulated: true, verifierUrl: "/assets/missing.wasm" }));
  check("a missing verifier is a failure, not a pass", !missing.ok && /could not be loaded/.test(missing.error || ""), missing.error);

  // 3. Text only.
  const rendered = await page.evaluate((result) => {
    const element = document.getElementById("panel");
    const tampered = structuredClone(result);
    tampered.checks[1].detail = '<img src="/x" id="injected">';
    window.verifier.renderChecks(element, tampered);
    return {
      items: element.querySelectorAll("li.check").length,
      injected: document.getElementById("injected") !== null,
      text: element.textContent,
    };
  }, afterwards);
  check("renderChecks lists every check", rendered.items === 12, rendered.items);
  check("renderChecks never makes markup from box data", !rendered.injected && rendered.text.includes('<img src="/x" id="injected">'));
  check("renderChecks shows the simulation loudly", rendered.text.includes("SIMULATED, not confidential"));

  // 4. Timing, with the verifier already loaded (as on every visit after the first fetch).
  const timings = [];
  for (let i = 0; i < runs; i++) {
    const r = await page.evaluate(() => window.verifier.verifyBox({ acceptSimulated: true }));
    if (!r.ok) check("timing run " + i + " verifies", false, r.error || failedNames(r));
    timings.push(r.timing);
  }
  const median = (key) => {
    const values = timings.map((t) => t[key]).sort((a, b) => a - b);
    return values[Math.floor(values.length / 2)];
  };
  const summary = {
    runs,
    first_visit: first.timing,
    median_total_ms: median("total_ms"),
    median_fetch_ms: median("fetch_ms"),
    median_verify_ms: median("verify_ms"),
    max_total_ms: Math.max(...timings.map((t) => t.total_ms)),
    chromium: browser.version(),
  };
  writeFileSync(join(outDir, "timing.json"), JSON.stringify(summary, null, 2));
  console.log("timing " + JSON.stringify(summary));
} catch (error) {
  check("the browser run finished", false, error && error.stack ? error.stack : String(error));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
