// The shared channel vectors (protocol/vectors/v1.json) in Chromium, through
// web-ui/assets/channel.js and the vendored @hpke/core. Driven by
// web-ui/tests/protocol_vectors_browser.rs, which serves the assets, the vectors, and
// /roundtrip (the Rust server side: cloister_protocol::server::open_chat_request, answering
// with sealed chunks).
//
// In the page: sealing with each case's fixed ephemeral seed must give the Rust bytes; each
// case's response must open, streamed in small pieces, to the same chunks; each refused
// response must fail with its reason; and a request sealed with a fresh random key must be
// opened by the Rust server, whose streamed answer the page opens, with a replay refused and
// a truncated answer detected.
//
// Environment: VECTORS_URL (http://127.0.0.1:PORT), CHROMIUM (default /usr/bin/chromium).
// Prints one line per check ("ok   ..." or "FAIL ...") and exits non-zero on any failure.
import { chromium } from "playwright-core";

const base = process.env.VECTORS_URL;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

let checks = [];
try {
  const page = await browser.newPage();
  page.on("console", (message) => console.log("page: " + message.text()));
  await page.goto(base + "/", { waitUntil: "load" });
  checks = await page.evaluate(async () => {
    const out = [];
    const check = (name, ok, detail) => out.push({ name, ok: Boolean(ok), detail: detail === undefined ? null : String(detail) });
    const hex = (text) => Uint8Array.from(text.match(/../g) ?? [], (pair) => parseInt(pair, 16));
    const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    const streamOf = (bytes, step) => new ReadableStream({
      start(controller) {
        for (let i = 0; i < bytes.length; i += step) controller.enqueue(bytes.slice(i, i + step));
        controller.close();
      },
    });
    try {
      const channel = await import("/assets/channel.js");
      const vectors = await (await fetch("/vectors.json")).json();
      check("the page is a secure context with WebCrypto X25519", isSecureContext && crypto.subtle !== undefined);

      for (const c of vectors.cases) {
        const { body, opener } = await channel.sealRequest(hex(c.server_public_key), c.key_id, hex(c.request_plaintext), { ephemeralSeed: hex(c.ephemeral_seed) });
        check(`${c.name}: sealing with the fixed ephemeral seed gives the Rust bytes`, toHex(body) === c.request_body, toHex(body).slice(0, 80));
        const got = [];
        for await (const plaintext of opener.open(streamOf(hex(c.response), 7))) got.push(toHex(plaintext));
        const want = c.response_chunks.map((chunk) => chunk.plaintext);
        check(`${c.name}: the response opens, 7 bytes at a time, to the same ${want.length} chunks`, JSON.stringify(got) === JSON.stringify(want) && opener.finished, got.length);
        const whole = await channel.sealRequest(hex(c.server_public_key), c.key_id, hex(c.request_plaintext), { ephemeralSeed: hex(c.ephemeral_seed) });
        const chunks = await whole.opener.push(hex(c.response));
        whole.opener.finish();
        check(`${c.name}: only the last chunk is final`, chunks.map((x) => x.isFinal).join() === c.response_chunks.map((x) => x.final).join());
      }

      for (const bad of vectors.invalid_responses) {
        const c = vectors.cases[bad.case];
        const { opener } = await channel.sealRequest(hex(c.server_public_key), c.key_id, hex(c.request_plaintext), { ephemeralSeed: hex(c.ephemeral_seed) });
        let code = "accepted";
        try {
          for await (const _ of opener.open(streamOf(hex(bad.response), 5))) { /* drain */ }
        } catch (error) {
          code = error instanceof channel.ChannelError ? error.code : "other: " + error;
        }
        check(`${c.name}: refused, ${bad.name} -> ${bad.error}`, code === bad.error, code);
      }

      // Fresh randomness against the Rust server.
      const c = vectors.cases[0];
      const text = "round trip through Rust, ünïcode ✓";
      const plaintext = new TextEncoder().encode(JSON.stringify({ ts_ms: Date.now(), conversation: null, request: { messages: [{ role: "user", content: text }] } }));
      const first = await channel.sealRequest(hex(c.server_public_key), c.key_id, plaintext);
      const second = await channel.sealRequest(hex(c.server_public_key), c.key_id, plaintext);
      check("two sealings of one plaintext differ (fresh ephemeral keys)", toHex(first.body) !== toHex(second.body));
      const response = await fetch("/roundtrip", { method: "POST", body: first.body });
      const events = [];
      for await (const chunk of first.opener.open(response.body)) events.push(JSON.parse(new TextDecoder().decode(chunk)));
      check("the Rust server opened the browser's request and its streamed answer opens",
        response.status === 200 && events.length === 3 && events[0].type === "meta" && events[1].type === "delta" && events[1].text === text && events[2].type === "done",
        JSON.stringify(events));
      const replay = await fetch("/roundtrip", { method: "POST", body: first.body });
      check("the same sealed request sent again is refused as a replay", replay.status === 409, replay.status + " " + (await replay.text()));
      const wrongKey = await channel.sealRequest(hex(vectors.cases[1].server_public_key), c.key_id, plaintext);
      const refused = await fetch("/roundtrip", { method: "POST", body: wrongKey.body });
      check("a request sealed to another key is refused", refused.status === 400, refused.status + " " + (await refused.text()));
      const cut = await fetch("/roundtrip?truncate=1", { method: "POST", body: second.body });
      const before = [];
      let code = "accepted";
      try {
        for await (const chunk of second.opener.open(cut.body)) before.push(chunk);
      } catch (error) {
        code = error instanceof channel.ChannelError ? error.code : "other: " + error;
      }
      check("an answer cut before its final chunk is detected as truncated", code === "truncated" && before.length === 2, code + ", " + before.length + " chunks first");
    } catch (error) {
      check("the page ran to the end", false, error && error.stack || error);
    }
    return out;
  });
} catch (error) {
  checks.push({ name: "the browser ran the page", ok: false, detail: String(error && error.stack || error) });
} finally {
  await browser.close();
}
for (const c of checks) console.log((c.ok ? "ok   " : "FAIL ") + c.name + (c.detail === null || c.ok ? "" : " (" + c.detail + ")"));
const failed = checks.length === 0 || checks.some((c) => !c.ok);
console.log(`protocol vectors in Chromium: ${checks.filter((c) => c.ok).length} checks ok, ${checks.filter((c) => !c.ok).length} failing`);
process.exit(failed ? 1 : 0);
