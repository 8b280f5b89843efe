// The browser's attestation verifier: the Rust checks of `cloister verify`
// (cloister_measurements::attestation), compiled to WebAssembly (verifier-wasm), loaded from
// /assets/verifier.wasm and called through its plain C ABI (alloc, dealloc, verify).
//
// verifyBox() does the whole job before the first message: a fresh random nonce, the
// attestation and the published measurements.json fetched together, the measurements pinned
// in this browser on first use (a change is refused, loudly, unless the user accepts it),
// the wasm verifier run, and the time taken measured. verifyBundle() runs the verifier alone
// on values the caller already has. renderChecks() draws a result into an element, with
// textContent only.
//
// This module decides nothing itself: every rule is in the Rust verifier. It must never
// treat a failure to load, fetch or parse as a pass, and never build HTML from box data.

export const VERIFIER_URL = "/assets/verifier.wasm";
export const MEASUREMENTS_PIN_KEY = "cloister.verify.measurements.v1";
const NONCE_BYTES = 32;

let verifierPromise = null;
let verifierUrlLoaded = null;

function hex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function sha256Hex(text) {
  return hex(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
}

// Loads (once per URL) and instantiates the verifier. It imports nothing.
export function loadVerifier(url = VERIFIER_URL) {
  if (verifierPromise === null || verifierUrlLoaded !== url) {
    verifierUrlLoaded = url;
    verifierPromise = (async () => {
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) throw new Error("the verifier " + url + " could not be loaded (" + response.status + ")");
      const bytes = await response.arrayBuffer();
      const { instance } = await WebAssembly.instantiate(bytes, {});
      const e = instance.exports;
      for (const name of ["memory", "alloc", "dealloc", "verify"]) {
        if (!(name in e)) throw new Error("the verifier " + url + " lacks its export " + name);
      }
      return e;
    })();
    verifierPromise.catch(() => { verifierPromise = null; });
  }
  return verifierPromise;
}

// Runs the wasm verify on one request string and returns its result string, unchanged.
export function runVerifier(exports, requestText) {
  const input = new TextEncoder().encode(requestText);
  const inPtr = exports.alloc(input.length);
  if (inPtr === 0) throw new Error("the verifier ran out of memory");
  try {
    new Uint8Array(exports.memory.buffer, inPtr, input.length).set(input);
    const outPtr = exports.verify(inPtr, input.length);
    if (outPtr === 0) throw new Error("the verifier ran out of memory");
    // Read the view after the call: the memory may have grown and moved.
    const length = new DataView(exports.memory.buffer).getUint32(outPtr, true);
    const text = new TextDecoder().decode(new Uint8Array(exports.memory.buffer, outPtr + 4, length).slice());
    exports.dealloc(outPtr, length + 4);
    return text;
  } finally {
    exports.dealloc(inPtr, input.length);
  }
}

// One JSON value as text. Text from the box is parsed and written again, so that it can
// only ever be one value in the request, never extra fields of it.
function jsonText(value) {
  if (value === null || value === undefined) return "null";
  return JSON.stringify(typeof value === "string" ? JSON.parse(value) : value);
}

// The request the wasm verify reads: {bundle, expected, nonce, now, accept_simulated}.
// bundle and expected may be JSON text (as fetched) or objects; bad JSON text throws.
export function verifierRequest({ bundle, expected = null, nonce, now, acceptSimulated = false }) {
  const nowSeconds = now === undefined ? Math.floor(Date.now() / 1000) : now;
  return '{"bundle":' + jsonText(bundle) +
    ',"expected":' + jsonText(expected) +
    ',"nonce":' + JSON.stringify(nonce) +
    ',"now":' + JSON.stringify(nowSeconds) +
    ',"accept_simulated":' + (acceptSimulated ? "true" : "false") + "}";
}

// Runs the verifier on values the caller already has. Returns the Rust report
// ({ok, simulated, trust_root, tee, model, hpke_public_key, hpke_key_id, checks, error?})
// with verify_ms added. Never throws for a bad box: failures are in the report.
export async function verifyBundle({ bundle, expected = null, nonce, now, acceptSimulated = false, verifierUrl = VERIFIER_URL }) {
  const exports = await loadVerifier(verifierUrl);
  const started = performance.now();
  const text = runVerifier(exports, verifierRequest({ bundle, expected, nonce, now, acceptSimulated }));
  const report = JSON.parse(text);
  report.verify_ms = performance.now() - started;
  return report;
}

// The pinned measurements.json of this origin: {sha256, text, pinned_at} or null.
export function pinnedMeasurements(storage = localStorage) {
  try {
    const value = JSON.parse(storage.getItem(MEASUREMENTS_PIN_KEY));
    return value && typeof value.text === "string" && typeof value.sha256 === "string" ? value : null;
  } catch (_) {
    return null;
  }
}

async function pin(storage, text) {
  const value = { sha256: await sha256Hex(text), text, pinned_at: new Date().toISOString() };
  storage.setItem(MEASUREMENTS_PIN_KEY, JSON.stringify(value));
  return value;
}

// Compares the served measurements.json with the pinned one and decides which to verify
// against. A change is used only if confirmChange({pinned, served}) resolves to true.
async function choosePin(storage, servedText, confirmChange) {
  const title = "The expected measurements are the ones this browser pinned";
  if (servedText === null) {
    const pinned = pinnedMeasurements(storage);
    return {
      expected: pinned ? pinned.text : null,
      check: { name: "measurements_pin", title, ok: pinned !== null, expected: pinned ? pinned.sha256 : "", actual: "",
        detail: pinned ? "the box publishes no measurements.json; checked against the pinned one" : "the box publishes no measurements.json and none is pinned: nothing to check the box against" },
      status: "none-served",
    };
  }
  const servedSha = await sha256Hex(servedText);
  const pinned = pinnedMeasurements(storage);
  if (pinned === null) {
    await pin(storage, servedText);
    return {
      expected: servedText,
      check: { name: "measurements_pin", title, ok: true, expected: servedSha, actual: servedSha,
        detail: "first use: the box's measurements.json is now pinned in this browser (trust on first use)" },
      status: "first-use",
    };
  }
  if (pinned.sha256 === servedSha) {
    return {
      expected: pinned.text,
      check: { name: "measurements_pin", title, ok: true, expected: pinned.sha256, actual: servedSha,
        detail: "the same as pinned on " + pinned.pinned_at },
      status: "same",
    };
  }
  const accepted = confirmChange ? await confirmChange({ pinned, served: { sha256: servedSha, text: servedText } }) === true : false;
  if (accepted) {
    await pin(storage, servedText);
    return {
      expected: servedText,
      check: { name: "measurements_pin", title, ok: true, expected: pinned.sha256, actual: servedSha,
        detail: "WARNING: the box's measurements CHANGED since " + pinned.pinned_at + "; you accepted the new ones, which are now pinned" },
      status: "changed-accepted",
    };
  }
  return {
    expected: pinned.text,
    check: { name: "measurements_pin", title, ok: false, expected: pinned.sha256, actual: servedSha,
      detail: "WARNING: THE BOX'S PUBLISHED MEASUREMENTS CHANGED since " + pinned.pinned_at + ". A new release does this; so does an attack. Nothing is sent until you check the release and accept the new measurements." },
    status: "changed-refused",
  };
}

// Verifies the box this page came from, before anything is sent. Options:
//   base             origin prefix of the box's URLs (default: this origin)
//   verifierUrl      where verifier.wasm is (default /assets/verifier.wasm)
//   acceptSimulated  accept the simulation root (development only; default false)
//   confirmChange    async ({pinned, served}) => true to accept changed measurements
//   storage          where the pin lives (default localStorage)
// Returns {ok, checks, report, bundle, pin, timing, error?}: checks are the pin check and
// then the verifier's; timing has wasm_load_ms, fetch_ms, verify_ms and total_ms (fetch and
// verify, the figure the issue bounds). Never throws.
export async function verifyBox(options = {}) {
  const { base = "", verifierUrl = base + VERIFIER_URL, acceptSimulated = false, confirmChange = null } = options;
  const storage = options.storage || localStorage;
  const timing = { wasm_load_ms: 0, fetch_ms: 0, verify_ms: 0, total_ms: 0 };
  const result = { ok: false, checks: [], report: null, bundle: null, pin: null, simulated_header: null, timing };
  try {
    const loadStarted = performance.now();
    const exports = await loadVerifier(verifierUrl);
    timing.wasm_load_ms = performance.now() - loadStarted;

    const started = performance.now();
    const nonce = hex(crypto.getRandomValues(new Uint8Array(NONCE_BYTES)));
    const [attestation, measurements] = await Promise.all([
      fetch(base + "/attestation?nonce=" + nonce, { credentials: "same-origin", cache: "no-store" }),
      fetch(base + "/measurements.json", { credentials: "same-origin", cache: "no-store" }),
    ]);
    if (!attestation.ok) throw new Error("the box gave no attestation (" + attestation.status + ")");
    const bundleText = await attestation.text();
    const servedText = measurements.ok ? await measurements.text() : null;
    result.simulated_header = attestation.headers.get("x-cloister-tee");
    timing.fetch_ms = performance.now() - started;

    const chosen = await choosePin(storage, servedText, confirmChange);
    result.pin = { status: chosen.status, pinned_sha256: chosen.check.expected, served_sha256: chosen.check.actual };

    const verifyStarted = performance.now();
    const report = JSON.parse(runVerifier(exports, verifierRequest({ bundle: bundleText, expected: chosen.expected, nonce, acceptSimulated })));
    timing.verify_ms = performance.now() - verifyStarted;
    timing.total_ms = performance.now() - started;

    result.report = report;
    try { result.bundle = JSON.parse(bundleText); } catch (_) { result.bundle = null; }
    result.checks = [chosen.check, ...(report.checks || [])];
    if (report.error) result.error = report.error;
    result.ok = report.ok === true && chosen.check.ok && result.checks.every((check) => check.ok);
  } catch (error) {
    result.ok = false;
    result.error = error && error.message ? error.message : String(error);
  }
  return result;
}

function line(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  element.textContent = text;
  return element;
}

// Draws a verifyBox() result (or a verifyBundle() report) into `element`: a summary line,
// a loud mark under simulation, then one item per check with its expected and actual values.
export function renderChecks(element, result) {
  const report = result.report || result;
  const checks = result.checks || [];
  element.replaceChildren();
  const failed = checks.filter((check) => !check.ok).map((check) => check.name);
  const summary = result.ok
    ? "Verified: every check passed."
    : "NOT verified" + (result.error ? ": " + result.error : failed.length ? ": " + failed.join(", ") + " failed" : "") + ". Nothing will be sent.";
  element.appendChild(line("p", result.ok ? "verify-summary ok" : "verify-summary fail", summary));
  if (report && report.simulated) {
    element.appendChild(line("p", "verify-simulated", "SIMULATED, not confidential: the quote is signed by Cloister's development key chain, not by Intel."));
  }
  const list = document.createElement("ul");
  list.className = "verify-checks";
  for (const check of checks) {
    const item = document.createElement("li");
    item.className = check.ok ? "check ok" : "check fail";
    item.dataset.check = check.name;
    item.appendChild(line("span", "mark", check.ok ? "✓ " : "✗ "));
    item.appendChild(line("strong", "title", check.title || check.name));
    if (check.detail) item.appendChild(line("div", "detail", check.detail));
    if (check.expected) item.appendChild(line("div", "expected", "expected: " + check.expected));
    if (check.actual) item.appendChild(line("div", "actual", "actual: " + check.actual));
    list.appendChild(item);
  }
  element.appendChild(list);
  if (result.timing && result.timing.total_ms) {
    const t = result.timing;
    element.appendChild(line("p", "verify-timing",
      "fetched and verified in " + t.total_ms.toFixed(0) + " ms (fetch " + t.fetch_ms.toFixed(0) + " ms, verify " + t.verify_ms.toFixed(0) + " ms)"));
  }
}
