// The owner's console at 1280 and 390 px wide, driven by web-ui/tests/console_browser.rs:
// sets up the owner with a virtual authenticator, opens /console, and at each width takes a
// full-page screenshot (OUT_DIR/console-WIDTH.png) and checks that the page reads well:
// at most 4,000 px tall at 1280, nothing wider than the window, and every long value
// (registers, hashes) on one line with its copy button.
//
// Environment: CLOISTER_URL, SETUP_CODE, SPKI (base64 SHA-256 of the server's public key),
// OUT_DIR, CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const base = process.env.CLOISTER_URL;
const outDir = process.env.OUT_DIR;
mkdirSync(outDir, { recursive: true });

function check(name, ok, detail) {
  console.log((ok ? "ok   " : "FAIL ") + name + (detail === undefined ? "" : " (" + detail + ")"));
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors-spki-list=" + process.env.SPKI,
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
      hasPrf: true,
    },
  });
  await page.goto(base + "/setup");
  await page.fill("#setup-code", process.env.SETUP_CODE);
  await page.fill("#setup-name", "Olivia");
  await Promise.all([page.waitForURL(base + "/"), page.click("#setup-form button")]);
  await page.waitForSelector("#signed-in");

  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: width > 600 ? 900 : 844 });
    await page.goto(base + "/console");
    await page.waitForSelector("#attestation");
    const layout = await page.evaluate(() => {
      const root = document.documentElement;
      const values = [...document.querySelectorAll("#attestation .value code")];
      const multiLine = values.filter((code) => {
        const lineHeight = parseFloat(getComputedStyle(code).lineHeight) || 20;
        return code.getBoundingClientRect().height > lineHeight * 1.5;
      });
      const copyButtons = document.querySelectorAll("#attestation .value button.copy[data-copy]").length;
      const checks = document.querySelectorAll("#attestation-checks tr.check").length;
      const registers = document.querySelectorAll("#expected-registers tr").length;
      return {
        height: root.scrollHeight,
        overflow: root.scrollWidth - root.clientWidth,
        values: values.length,
        multiLine: multiLine.map((c) => c.textContent.slice(0, 16)),
        copyButtons,
        checks,
        registers,
      };
    });
    await page.screenshot({ path: join(outDir, "console-" + width + ".png"), fullPage: true });
    console.log("console at " + width + " px: " + JSON.stringify(layout));
    check(`the attestation table lists checks at ${width} px`, layout.checks >= 5, layout.checks);
    check(`the expected registers are listed at ${width} px`, layout.registers === 5, layout.registers);
    check(`every long value has a copy button at ${width} px`, layout.values > 10 && layout.copyButtons === layout.values, `${layout.values} values, ${layout.copyButtons} buttons`);
    check(`every long value is on one line at ${width} px`, layout.multiLine.length === 0, layout.multiLine.join(", "));
    check(`nothing is wider than the window at ${width} px`, layout.overflow <= 1, layout.overflow + " px too wide");
    if (width === 1280) {
      check("the page at 1280 px is at most 4000 px tall", layout.height <= 4000, layout.height + " px");
    }
  }
  // The copy button copies the whole value, not the part shown.
  await page.context().grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  const first = page.locator("#expected-registers .value button.copy").first();
  await first.click();
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  check("a copy button copies the whole value", /^[0-9a-f]{96}$/.test(copied), copied.length + " characters");
} catch (error) {
  check("the console test ran", false, error && error.stack ? error.stack : String(error));
} finally {
  await browser.close();
}
