// Browser flows against a running web-ui, driven by web-ui/tests/browser_flows.rs.
//
// playwright-core drives Debian's Chromium; each person gets their own browser context
// (own cookies) and their own DevTools virtual authenticator with PRF. Every request the
// browser makes is recorded, and at the end none may carry the PRF output or a `prf`
// extension result. Screenshots of every page go to OUT_DIR.
//
// Environment: CLOISTER_URL (https://localhost:PORT), SETUP_CODE, SPKI (base64 SHA-256 of
// the server's public key, so Chromium trusts the self-signed certificate without error
// pages), OUT_DIR, CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const base = process.env.CLOISTER_URL;
const setupCode = process.env.SETUP_CODE;
const outDir = process.env.OUT_DIR;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(outDir, { recursive: true });

const requests = [];
const checks = [];
function check(name, ok, detail) {
  checks.push({ name, ok: Boolean(ok), detail: detail === undefined ? null : String(detail) });
  console.log((ok ? "ok   " : "FAIL ") + name + (detail === undefined ? "" : " (" + detail + ")"));
}

async function person(browser, who) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  page.on("request", (request) => {
    requests.push({ who, url: request.url(), method: request.method(), headers: request.headers(), body: request.postData() || "" });
  });
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
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
  return { context, page, cdp, authenticatorId, who };
}

async function shot(p, name) {
  await p.page.screenshot({ path: join(outDir, name + ".png"), fullPage: true });
}

async function prfOf(p) {
  return p.page.evaluate(() => sessionStorage.getItem("cloister.prf.first"));
}

async function signedInText(p) {
  const element = await p.page.$("#signed-in");
  return element ? element.textContent() : null;
}

async function signOut(p) {
  await Promise.all([p.page.waitForURL(base + "/"), p.page.click("#sign-out")]);
  await p.page.waitForSelector("#sign-in");
}

async function signIn(p) {
  await p.page.click("#sign-in");
  await p.page.waitForFunction(() => location.pathname !== "/" || document.querySelector("#signed-in") || document.querySelector("#message").textContent.length > 0, null, { timeout: 15000 });
}

const browser = await chromium.launch({
  executablePath,
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

let failed = false;
try {
  // 1. The owner sets up the box with the code from the console.
  const owner = await person(browser, "owner");
  await owner.page.goto(base + "/");
  await shot(owner, "01-no-owner-yet");
  check("the self-signed banner shows the fingerprint", await owner.page.isVisible("#self-signed-banner"));
  await owner.page.goto(base + "/setup");
  await owner.page.fill("#setup-code", setupCode);
  await owner.page.fill("#setup-name", "Olivia");
  await shot(owner, "02-setup");
  await Promise.all([owner.page.waitForURL(base + "/"), owner.page.click("#setup-form button")]);
  await owner.page.waitForSelector("#signed-in");
  check("the owner is signed in after setup", (await signedInText(owner)).includes("Olivia"));
  await shot(owner, "03-owner-home");
  const ownerPrfAtSetup = await prfOf(owner);

  // The code is spent: the setup page is gone.
  await owner.page.goto(base + "/setup");
  check("the setup page is gone once the owner exists", !(await owner.page.isVisible("#setup-form")));

  // 2. The console shows services and the certificate.
  await owner.page.goto(base + "/console");
  const services = await owner.page.textContent("#services");
  check("the console shows the supervisor's services", services.includes("model-runner") && services.includes("running"), services.slice(0, 200));
  const model = await owner.page.textContent("#model");
  check("the console shows the model's queue and KV use", model.includes("cloister_queue_depth") && model.includes("SmolLM2-135M") && model.includes("37"), model.slice(0, 200));
  const attestation = await owner.page.textContent("#attestation");
  check("the console shows the expected measurements", attestation.includes("mrtd") && attestation.includes("5e5e5e5e"), attestation.slice(0, 120));
  const certificate = await owner.page.textContent("#certificate");
  check("the console shows the certificate and its expiry", certificate.includes("self-signed") && /days left/.test(certificate));
  const logs = await owner.page.textContent("#logs");
  check("the console shows service logs", logs.includes("listening"));
  await shot(owner, "04-console");

  // 3. The owner invites Bob.
  await owner.page.fill("#invite-name", "Bob");
  await owner.page.click("#invite-form button");
  await owner.page.waitForFunction(() => document.querySelector("#invite-link").textContent.includes("/invite#"));
  const link = await owner.page.textContent("#invite-link");
  check("an invitation link is made", link.startsWith(base + "/invite#"), link.replace(/#.*/, "#..."));
  await shot(owner, "05-invitation-created");

  // 4. Bob registers from the link, then signs in without a user name, twice.
  const bob = await person(browser, "bob");
  await bob.page.goto(link);
  await shot(bob, "06-invitation");
  await Promise.all([bob.page.waitForURL(base + "/"), bob.page.click("#accept-invitation")]);
  await bob.page.waitForSelector("#signed-in");
  check("Bob is signed in after registering", (await signedInText(bob)).includes("Bob"));
  const bobPrfAtRegistration = await prfOf(bob);
  await shot(bob, "07-bob-home");

  // The link works once.
  const eve = await person(browser, "eve");
  await eve.page.goto(link);
  await eve.page.click("#accept-invitation");
  await eve.page.waitForFunction(() => document.querySelector("#message").textContent.length > 0);
  check("a used invitation link is refused", (await eve.page.textContent("#message")).includes("not valid"));
  await shot(eve, "08-used-invitation");

  await signOut(bob);
  await shot(bob, "09-sign-in");
  await signIn(bob);
  await bob.page.waitForSelector("#signed-in");
  check("Bob signs in with no user name", (await signedInText(bob)).includes("Bob"));
  const bobPrf1 = await prfOf(bob);
  await signOut(bob);
  check("signing out forgets the PRF output", (await prfOf(bob)) === null);
  await signIn(bob);
  await bob.page.waitForSelector("#signed-in");
  const bobPrf2 = await prfOf(bob);
  check("a PRF output exists at sign-in", typeof bobPrf1 === "string" && bobPrf1.length >= 43, bobPrf1 && bobPrf1.length);
  check("the PRF output is the same on every sign-in", bobPrf1 === bobPrf2);
  if (bobPrfAtRegistration) check("the PRF output at registration matches sign-in", bobPrfAtRegistration === bobPrf1);
  check("owner and Bob have different PRF outputs", !ownerPrfAtSetup || ownerPrfAtSetup !== bobPrf1);
  await bob.page.goto(base + "/account");
  await shot(bob, "10-bob-passkeys");
  await bob.page.goto(base + "/console");
  check("Bob cannot open the console", !(await bob.page.isVisible("#services")));

  // A forged request from Bob's page without the CSRF header is refused.
  const forged = await bob.page.evaluate(async () => {
    const response = await fetch("/api/owner/invitations", { method: "POST", headers: { "content-type": "application/json" }, body: "{\"name\":\"x\"}" });
    return response.status;
  });
  check("a request without the CSRF token is refused", forged === 403, forged);

  // 5. The owner revokes Bob; Bob is locked out.
  await owner.page.goto(base + "/console");
  const bobRow = owner.page.locator("li.user", { hasText: "Bob" });
  await Promise.all([owner.page.waitForEvent("load"), bobRow.locator("button[data-action=revoke-user]").click()]);
  check("the console marks Bob revoked", (await owner.page.textContent("#users")).includes("(revoked)"));
  await shot(owner, "11-bob-revoked");
  await bob.page.goto(base + "/");
  check("Bob's session ended with the revocation", (await signedInText(bob)) === null);
  await bob.page.click("#sign-in");
  await bob.page.waitForFunction(() => document.querySelector("#message").textContent.length > 0);
  const refusal = await bob.page.textContent("#message");
  check("Bob's passkey no longer signs in", refusal.includes("not registered"), refusal);
  await shot(bob, "12-bob-locked-out");

  // 6. No request ever carried the PRF output.
  const prfValues = [ownerPrfAtSetup, bobPrfAtRegistration, bobPrf1, bobPrf2].filter(Boolean);
  const leaks = requests.filter((r) => {
    const everything = r.url + JSON.stringify(r.headers) + r.body;
    return /"prf"/.test(r.body) || prfValues.some((v) => everything.includes(v));
  });
  check("no request carries the PRF output or a prf result", leaks.length === 0, leaks.map((r) => r.url).join(" "));
  check("credentials were sent (the check above saw them)", requests.some((r) => r.url.endsWith("/api/signin/finish") && r.body.includes("clientExtensionResults")));
} catch (error) {
  console.log("FAIL the flow stopped: " + (error && error.stack || error));
  failed = true;
} finally {
  writeFileSync(join(outDir, "requests.json"), JSON.stringify(requests.map((r) => ({ who: r.who, method: r.method, url: r.url.replace(/#.*/, "") })), null, 1));
  writeFileSync(join(outDir, "checks.json"), JSON.stringify(checks, null, 1));
  await browser.close();
}
failed = failed || checks.some((c) => !c.ok) || checks.length === 0;
process.exit(failed ? 1 : 0);
