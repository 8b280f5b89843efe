// The attested chat in Chromium, against web-ui (simulated TEE) and model-runner on the real
// model, driven by web-ui/tests/chat_browser.rs.
//
// Each person has their own browser context and DevTools virtual authenticator with PRF.
// Flows: verify then chat, the answer streams in; reload and the history decrypts; a second
// user cannot read the first user's history; a tampered quote, a wrong expected measurement
// and a truncated answer stream each give a visible refusal (the tampering is done here, by
// intercepting the browser's own requests: nothing in the server can be told to misbehave);
// stop ends an answer. Screenshots go to OUT_DIR; the prompt and the answer are written to
// OUT_DIR/plaintext.json so the Rust side can search the server's files for them.
//
// Environment: CLOISTER_URL, SETUP_CODE, SPKI, OUT_DIR, CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const base = process.env.CLOISTER_URL;
const setupCode = process.env.SETUP_CODE;
const outDir = process.env.OUT_DIR;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(outDir, { recursive: true });

const PROMPT = "Describe the old stone bridge of Marrowick-5528 in two sentences.";
const requests = [];
function check(name, ok, detail) {
  console.log((ok ? "ok   " : "FAIL ") + name + (detail === undefined ? "" : " (" + detail + ")"));
  if (!ok) process.exitCode = 1;
}

async function person(browser, who) {
  // ignoreHTTPSErrors: route.fetch() (the tampering below) goes through Playwright's own client,
  // which does not see the SPKI pin Chromium was given; Chromium itself still checks it.
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 }, acceptDownloads: true, ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.on("request", (request) => {
    requests.push({ who, url: request.url(), headers: request.headers(), body: request.postData() || "" });
  });
  page.on("console", (message) => { if (message.type() === "error") console.log("  [" + who + " console] " + message.text()); });
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: { protocol: "ctap2", transport: "internal", hasResidentKey: true, hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true, hasPrf: true },
  });
  return { context, page, who };
}

async function shot(p, name) {
  await p.page.screenshot({ path: join(outDir, "chat-" + name + ".png"), fullPage: true });
}

async function signOutAndIn(p) {
  await Promise.all([p.page.waitForURL(base + "/"), p.page.click("#sign-out")]);
  await p.page.waitForSelector("#sign-in");
  await p.page.click("#sign-in");
  await p.page.waitForFunction(() => location.pathname !== "/" || document.querySelector("#signed-in"), null, { timeout: 15000 });
}

async function openChat(p) {
  await p.page.goto(base + "/chat");
  await p.page.waitForFunction(() => document.getElementById("chat-app").dataset.ready === "true", null, { timeout: 60000 });
}

async function verifyStatus(p) {
  return p.page.evaluate(() => ({ className: document.getElementById("verify-status").className, text: document.getElementById("verify-status").textContent, send: document.getElementById("send").disabled }));
}

// Sends `prompt` and waits for the answer to end; returns the last assistant message.
async function chat(p, prompt, maxTokens) {
  await p.page.fill("#max-tokens", String(maxTokens));
  await p.page.fill("#prompt", prompt);
  await p.page.click("#send");
  await p.page.waitForFunction(() => document.getElementById("chat-app").dataset.busy === "false", null, { timeout: 120000 });
  return p.page.evaluate(() => {
    const last = [...document.querySelectorAll("#thread .message.assistant")].pop();
    return { text: last.querySelector(".content").textContent, note: (last.querySelector(".note") || {}).textContent || "", error: document.getElementById("chat-error").textContent };
  });
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--ignore-certificate-errors-spki-list=" + process.env.SPKI],
});

const plaintext = { prompt: PROMPT, answers: [] };
try {
  // The owner sets up the box, then signs in again so the tab holds the passkey's PRF output.
  const owner = await person(browser, "owner");
  await owner.page.goto(base + "/setup");
  await owner.page.fill("#setup-code", setupCode);
  await owner.page.fill("#setup-name", "Olivia");
  await Promise.all([owner.page.waitForURL(base + "/"), owner.page.click("#setup-form button")]);
  await owner.page.waitForSelector("#signed-in");
  await signOutAndIn(owner);
  check("every page carries the SIMULATED banner", await owner.page.isVisible("#simulated-banner"));

  // 1. Verify, then chat: the streamed answer appears, with the model's name.
  await openChat(owner);
  let status = await verifyStatus(owner);
  check("the attestation verifies (against the simulation root) before anything is sent", status.className.startsWith("ok") && !status.send, status.text);
  const checks = await owner.page.$$eval("#verify-checks li", (items) => items.map((item) => item.className + " " + item.textContent));
  check("the panel lists each check", checks.length >= 5 && checks.every((c) => c.startsWith("check ok")), checks.join(" | "));
  await shot(owner, "01-verified");

  // The Markdown renderer, on hostile text: structure yes, markup and script never.
  const rendered = await owner.page.evaluate(async () => {
    const { renderMarkdown } = await import("/assets/markdown.js");
    const div = document.createElement("div");
    renderMarkdown(div, "# Title\n<img src=x onerror=alert(1)>\n[click](javascript:alert(1)) and [ok](https://example.org/) **bold** `code`\n\n```html\n<script>alert(2)</script>\n```\n\n- one\n- two\n\n> quoted <b>x</b>");
    return {
      dangerous: div.querySelectorAll("img, script, b, [onerror]").length,
      links: [...div.querySelectorAll("a")].map((a) => a.getAttribute("href")),
      strong: div.querySelectorAll("strong").length,
      items: div.querySelectorAll("li").length,
      heading: div.querySelectorAll("h3").length,
      code: div.querySelector("pre code").textContent,
      text: div.textContent,
    };
  });
  check("markdown renders structure but never markup or scripts",
    rendered.dangerous === 0 && rendered.links.length === 1 && rendered.links[0] === "https://example.org/" && rendered.strong === 1 && rendered.items === 2 && rendered.heading === 1 && rendered.code === "<script>alert(2)</script>" && rendered.text.includes("<img src=x onerror=alert(1)>"),
    JSON.stringify(rendered));
  const first = await chat(owner, PROMPT, 32);
  check("the streamed answer appears", first.text.trim().length > 0 && !first.error, JSON.stringify(first));
  plaintext.answers.push(first.text);
  const modelName = await owner.page.textContent("#model-name");
  check("the page names the model that answered", /\S/.test(modelName) && modelName !== "not known yet", modelName);
  await shot(owner, "02-answer");

  // 2. Reload: the conversation is listed and decrypts to the same text.
  await openChat(owner);
  const titles = await owner.page.$$eval("#conversations button.conversation", (buttons) => buttons.map((b) => b.textContent));
  check("the conversation is listed after a reload (its title decrypted)", titles.length === 1 && PROMPT.startsWith(titles[0]), titles.join(" | "));
  await owner.page.click("#conversations button.conversation");
  await owner.page.waitForSelector("#thread .message.assistant");
  const reloaded = await owner.page.evaluate(() => ({
    user: document.querySelector("#thread .message.user .content").textContent,
    answer: document.querySelector("#thread .message.assistant .content").textContent,
  }));
  check("the history decrypts to the same conversation", reloaded.user === PROMPT && reloaded.answer === first.text);
  const conversationId = await owner.page.getAttribute("#conversations button.conversation", "data-id");
  await shot(owner, "03-history-after-reload");

  // Stop: the answer ends early and says so.
  await owner.page.click("#new-conversation");
  await owner.page.fill("#max-tokens", "1500");
  await owner.page.fill("#prompt", "Count from one to one thousand, in words, one number per line.");
  await owner.page.click("#send");
  await owner.page.waitForFunction(() => {
    const last = [...document.querySelectorAll("#thread .message.assistant .content")].pop();
    return last && last.textContent.length > 10;
  }, null, { timeout: 60000 });
  await owner.page.click("#stop");
  await owner.page.waitForFunction(() => document.getElementById("stop").disabled, null, { timeout: 10000 });
  const stopped = await owner.page.evaluate(() => [...document.querySelectorAll("#thread .message.assistant .note")].map((n) => n.textContent).pop());
  check("stop ends the answer and says so", stopped === "Stopped.", stopped);
  plaintext.answers.push(await owner.page.evaluate(() => [...document.querySelectorAll("#thread .message.assistant .content")].pop().textContent));
  await shot(owner, "04-stopped");

  // 3. A second user cannot read the first user's history.
  const link = await owner.page.evaluate(async () => {
    const token = document.querySelector('meta[name="csrf-token"]').content;
    const response = await fetch("/api/owner/invitations", { method: "POST", headers: { "content-type": "application/json", "x-csrf-token": token }, body: JSON.stringify({ name: "Bob" }) });
    return (await response.json()).link;
  });
  const bob = await person(browser, "bob");
  await bob.page.goto(link);
  await Promise.all([bob.page.waitForURL(base + "/"), bob.page.click("#accept-invitation")]);
  await bob.page.waitForSelector("#signed-in");
  await signOutAndIn(bob);
  await openChat(bob);
  const bobTitles = await bob.page.$$eval("#conversations button.conversation", (buttons) => buttons.length);
  check("Bob sees none of Olivia's conversations", bobTitles === 0, bobTitles);
  const bobReads = await bob.page.evaluate(async (id) => (await fetch("/api/history/" + id)).status, conversationId);
  check("Bob cannot fetch Olivia's conversation by its id", bobReads === 404, bobReads);
  await shot(bob, "05-second-user");

  // 4a. A tampered quote: one byte of the quote flipped on its way to the browser.
  await bob.page.route("**/attestation?*", async (route) => {
    const response = await route.fetch();
    const bundle = await response.json();
    const quote = Buffer.from(bundle.quote, "base64");
    quote[600] ^= 0x01;
    bundle.quote = quote.toString("base64");
    await route.fulfill({ response, json: bundle });
  });
  await openChat(bob);
  status = await verifyStatus(bob);
  check("a tampered quote is refused visibly and nothing can be sent", status.className === "fail" && status.send && /FAILED/.test(status.text), status.text);
  await shot(bob, "06-tampered-quote");
  await bob.page.unroute("**/attestation?*");

  // 4b. A wrong expected measurement (a fresh browser: nothing pinned yet).
  await bob.page.evaluate(() => localStorage.clear());
  await bob.page.route("**/measurements.json", async (route) => {
    const response = await route.fetch();
    const measurements = await response.json();
    measurements.mrtd = measurements.mrtd.replace(/^./, (c) => (c === "0" ? "1" : "0"));
    await route.fulfill({ response, json: measurements });
  });
  await openChat(bob);
  status = await verifyStatus(bob);
  const mrtdFailed = await bob.page.$$eval("#verify-checks li.fail", (items) => items.map((i) => i.dataset.check));
  check("a wrong expected measurement is refused visibly", status.className === "fail" && status.send && mrtdFailed.includes("mrtd"), mrtdFailed.join(","));
  await shot(bob, "07-wrong-measurement");
  await bob.page.unroute("**/measurements.json");
  await bob.page.evaluate(() => localStorage.clear());

  // 4c. A truncated answer stream: the last bytes (the final chunk's end) cut off.
  await openChat(bob);
  await bob.page.route("**/api/chat", async (route) => {
    const response = await route.fetch();
    const body = await response.body();
    await route.fulfill({ response, body: body.subarray(0, body.length - 5) });
  });
  const truncated = await chat(bob, "Say hello to the ferry of Dunmere-8812.", 16);
  check("a truncated stream is refused visibly", /REFUSED/.test(truncated.error) && /REFUSED/.test(truncated.note), truncated.error);
  plaintext.answers.push(truncated.text);
  await shot(bob, "08-truncated-stream");
  await bob.page.unroute("**/api/chat");

  // No request carried the PRF output, and no request carried the prompt in the clear.
  const prfValues = [];
  for (const p of [owner, bob]) {
    const value = await p.page.evaluate(() => sessionStorage.getItem("cloister.prf.first"));
    if (value) prfValues.push(value);
  }
  check("both tabs hold a PRF output", prfValues.length === 2);
  const leaks = requests.filter((r) => {
    const everything = r.url + JSON.stringify(r.headers) + r.body;
    return prfValues.some((v) => everything.includes(v)) || /"prf"/.test(r.body);
  });
  check("no request carries the PRF output", leaks.length === 0, leaks.map((r) => r.url).join(" "));
  const clear = requests.filter((r) => r.body.includes("Marrowick-5528"));
  check("no request carries the prompt in the clear", clear.length === 0, clear.map((r) => r.url).join(" "));
} catch (error) {
  console.log("FAIL the flow stopped: " + (error && error.stack || error));
  process.exitCode = 1;
} finally {
  writeFileSync(join(outDir, "plaintext.json"), JSON.stringify(plaintext));
  await browser.close();
}
