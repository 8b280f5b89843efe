// The chat page. Order of business:
// 1. Verify the box: fetch a fresh attestation for a random nonce and the expected
//    measurements, and run the verifier (verify.js, the same Rust code as `cloister verify`,
//    compiled to WebAssembly). Every check is shown with its values. Unless all pass, the
//    send button stays off and nothing is sent.
// 2. Unlock the history with the passkey's PRF output (history.js); without it, or when the
//    owner disallows history, conversations are ephemeral.
// 3. Chat: each request is sealed to the attested HPKE key (channel.js); the answer streams
//    back sealed, chunk by chunk, and is rendered as Markdown with DOM nodes (markdown.js),
//    never as HTML. A stream that ends without its final chunk is refused, visibly.
"use strict";

import { renderMarkdown } from "./markdown.js";
import * as history from "./history.js";

const REATTEST_AFTER_MS = 5 * 60 * 1000;
const DEFAULT_MAX_TOKENS = 512;

const app = document.getElementById("chat-app");
const $ = (id) => document.getElementById(id);

const state = {
  verified: null, // { bundle, at } once every check passed
  historyKey: null, // raw bytes, in memory only
  historyAllowed: app.dataset.historyAllowed === "true",
  conversations: new Map(), // id -> { id, title, messages, updated }
  current: null,
  streaming: null, // AbortController of the answer in progress
};

function hex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

function csrf() {
  return document.querySelector('meta[name="csrf-token"]').content;
}

async function api(path, body) {
  const options = { credentials: "same-origin" };
  if (body !== undefined) {
    options.method = "POST";
    options.headers = { "content-type": "application/json", "x-csrf-token": csrf() };
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = {};
  try { data = await response.json(); } catch (_) { data = {}; }
  if (!response.ok) {
    const error = new Error(data.error || ("the box answered " + response.status));
    error.status = response.status;
    throw error;
  }
  return data;
}

function showError(text) {
  $("chat-error").textContent = text || "";
}

// ---- 1. verification ------------------------------------------------------------------

function setStatus(kind, text) {
  const status = $("verify-status");
  status.className = kind;
  status.textContent = text;
}

// Runs verify.js's verifyBox (fresh nonce, attestation and measurements.json, first-use pin,
// the wasm verifier) and shows every check. `acceptChange` accepts changed measurements
// (only after the user pressed the button that says what that means).
async function verify(acceptChange = false) {
  state.verified = null;
  $("send").disabled = true;
  $("accept-measurements").hidden = true;
  setStatus("pending", "Checking the box's attestation before anything is sent…");
  let result;
  try {
    const verifier = await import("./verify.js");
    result = await verifier.verifyBox({
      acceptSimulated: app.dataset.simulated === "true",
      confirmChange: async () => acceptChange,
    });
    verifier.renderChecks($("verify-checks"), result);
  } catch (error) {
    result = { ok: false, error: "the verifier could not run: " + (error.message || String(error)) };
  }
  if (result.bundle) {
    const bundle = result.bundle;
    $("verify-values").textContent = JSON.stringify({
      tee: bundle.tee, model: bundle.model, hpke_public_key: bundle.hpke_public_key, hpke_key_id: bundle.hpke_key_id,
      tls_spki_sha256: bundle.tls_spki_sha256, nonce: bundle.nonce, quote_bytes: Math.floor(bundle.quote.length * 3 / 4),
      timing_ms: result.timing, pin: result.pin,
    }, null, 2);
  }
  if (!result.ok) {
    if (result.pin && result.pin.status === "changed-refused") $("accept-measurements").hidden = false;
    const failed = (result.checks || []).filter((check) => !check.ok).map((check) => check.title || check.name);
    setStatus("fail", "Verification FAILED: " + (result.error || failed.join("; ") || "the verifier refused the box") + ". Nothing will be sent.");
    return false;
  }
  const bundle = result.bundle;
  state.verified = { bundle, at: Date.now() };
  $("model-name").textContent = bundle.model || "unknown";
  const simulated = result.report && result.report.simulated;
  setStatus(simulated ? "ok simulated" : "ok",
    simulated
      ? "Verified against the SIMULATION root: the checks pass, but this box is NOT confidential."
      : "Verified: the expected code, inside a genuine TDX trust domain, holds the key your messages are sealed to.");
  $("send").disabled = state.streaming !== null;
  return true;
}

// ---- 2. history -----------------------------------------------------------------------

async function unlockHistory() {
  const stateText = $("history-state");
  if (!state.historyAllowed) {
    stateText.textContent = "The owner does not allow keeping history on this box: conversations are ephemeral.";
    return;
  }
  const signedIn = history.signedInPrf();
  const listed = await api("/api/history/keys");
  const mine = signedIn && listed.keys.find((key) => key.credential_id === signedIn.credentialId);
  if (mine) {
    state.historyKey = await history.unwrapHistoryKey(history.unb64(mine.wrapped), signedIn.prf, signedIn.credentialId);
  } else if (listed.keys.length === 0 && signedIn) {
    state.historyKey = history.newHistoryKey();
    const wrapped = await history.wrapHistoryKey(state.historyKey, signedIn.prf, signedIn.credentialId);
    await api("/api/history/keys", { credential_id: signedIn.credentialId, wrapped: history.b64(wrapped) });
  } else if (listed.keys.length > 0) {
    stateText.textContent = signedIn
      ? "This passkey has no copy of your history key yet. Unlock with a passkey that has one, and this one gets its copy."
      : "Sign in again with a passkey that supports PRF to open your history.";
    $("unlock-history").hidden = false;
    return;
  } else {
    stateText.textContent = "This passkey gives no PRF output, so history cannot be encrypted: conversations are ephemeral.";
    return;
  }
  stateText.textContent = "History: encrypted in this browser with your passkey; the box stores only ciphertext.";
  await loadConversations();
}

async function unlockWithAnotherPasskey() {
  const listed = await api("/api/history/keys");
  const other = await history.prfFromPasskey(listed.keys.map((key) => key.credential_id));
  const entry = listed.keys.find((key) => key.credential_id === other.credentialId);
  if (!entry) throw new Error("that passkey has no copy of the history key");
  state.historyKey = await history.unwrapHistoryKey(history.unb64(entry.wrapped), other.prf, other.credentialId);
  const signedIn = history.signedInPrf();
  if (signedIn && signedIn.credentialId !== other.credentialId) {
    const wrapped = await history.wrapHistoryKey(state.historyKey, signedIn.prf, signedIn.credentialId);
    await api("/api/history/keys", { credential_id: signedIn.credentialId, wrapped: history.b64(wrapped) });
  }
  $("unlock-history").hidden = true;
  $("history-state").textContent = "History unlocked.";
  await loadConversations();
}

async function loadConversations() {
  const listed = await api("/api/history");
  state.conversations.clear();
  for (const entry of listed.conversations) {
    try {
      const meta = await history.openBlob(state.historyKey, "meta", entry.id, history.unb64(entry.meta));
      state.conversations.set(entry.id, { id: entry.id, title: meta.title, messages: null, updated: entry.updated_at_s, saved: true });
    } catch (_) {
      state.conversations.set(entry.id, { id: entry.id, title: "(cannot be decrypted)", messages: null, updated: entry.updated_at_s, broken: true, saved: true });
    }
  }
  drawConversationList();
}

async function loadMessages(conversation) {
  if (conversation.messages) return conversation.messages;
  const stored = await api("/api/history/" + conversation.id);
  const body = await history.openBlob(state.historyKey, "body", conversation.id, history.unb64(stored.body));
  conversation.messages = body.messages;
  return conversation.messages;
}

async function save(conversation) {
  if (conversation.ephemeral || !state.historyKey || !state.historyAllowed) return;
  const meta = await history.sealBlob(state.historyKey, "meta", conversation.id, { title: conversation.title });
  const body = await history.sealBlob(state.historyKey, "body", conversation.id, { messages: conversation.messages });
  await api("/api/history/" + conversation.id, { meta: history.b64(meta), body: history.b64(body) });
  conversation.saved = true;
}

function drawConversationList() {
  const list = $("conversations");
  list.replaceChildren();
  for (const conversation of state.conversations.values()) {
    if (conversation.ephemeral) continue;
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "conversation" + (state.current === conversation ? " current" : "");
    button.dataset.id = conversation.id;
    button.textContent = conversation.title || "(untitled)";
    button.addEventListener("click", guard(() => open(conversation)));
    item.appendChild(button);
    list.appendChild(item);
  }
}

// ---- 3. the conversation --------------------------------------------------------------

function newId() {
  return hex(crypto.getRandomValues(new Uint8Array(16)));
}

function newConversation() {
  const conversation = {
    id: newId(),
    title: "",
    messages: [],
    ephemeral: $("ephemeral").checked || !state.historyKey,
  };
  state.current = conversation;
  drawThread();
  drawConversationList();
  return conversation;
}

async function open(conversation) {
  if (state.streaming) return;
  if (conversation.broken) throw new Error("this conversation cannot be decrypted with your key");
  await loadMessages(conversation);
  state.current = conversation;
  drawThread();
  drawConversationList();
}

function messageNode(message) {
  const node = document.createElement("article");
  node.className = "message " + message.role;
  const who = document.createElement("header");
  who.textContent = message.role === "user" ? "You" : ("Model" + (message.model ? " · " + message.model : ""));
  const content = document.createElement("div");
  content.className = "content";
  if (message.role === "assistant") renderMarkdown(content, message.content);
  else content.textContent = message.content;
  node.append(who, content);
  if (message.note) {
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = message.note;
    node.appendChild(note);
  }
  return node;
}

function drawThread() {
  const thread = $("thread");
  thread.replaceChildren();
  const conversation = state.current;
  if (!conversation) return;
  for (const message of conversation.messages) thread.appendChild(messageNode(message));
  const last = conversation.messages[conversation.messages.length - 1];
  $("regenerate").disabled = !last || state.streaming !== null;
  $("delete-conversation").disabled = !conversation.saved;
}

function maxTokens() {
  const input = $("max-tokens");
  const value = input ? Number(input.value) : DEFAULT_MAX_TOKENS;
  return Number.isInteger(value) && value > 0 ? value : DEFAULT_MAX_TOKENS;
}

// Sends the conversation's messages sealed and streams the answer into a new message.
async function ask(conversation) {
  if (!state.verified || Date.now() - state.verified.at > REATTEST_AFTER_MS) {
    // Attest again: the certificate (bound in the quote) may have been renewed meanwhile.
    if (!(await verify())) throw new Error("the box is not verified, so nothing was sent");
  }
  const channel = await import("./channel.js");
  const bundle = state.verified.bundle;
  const request = {
    ts_ms: Date.now(),
    conversation: conversation.ephemeral ? null : conversation.id,
    request: {
      messages: conversation.messages.map((m) => ({ role: m.role, content: m.content })),
      max_tokens: maxTokens(),
    },
  };
  const sealed = await channel.sealRequest(history.unb64(bundle.hpke_public_key), bundle.hpke_key_id, new TextEncoder().encode(JSON.stringify(request)));
  const answer = { role: "assistant", content: "", model: "" };
  conversation.messages.push(answer);
  drawThread();
  const node = $("thread").lastElementChild;
  const content = node.querySelector(".content");
  const controller = new AbortController();
  state.streaming = controller;
  $("send").disabled = true;
  $("stop").disabled = false;
  $("regenerate").disabled = true;
  let finished = false;
  let failure = null;
  try {
    const response = await fetch("/api/chat", {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "message/cloister-chat-req", "x-csrf-token": csrf() },
      body: sealed.body,
      signal: controller.signal,
    });
    if (!response.ok) {
      let message = "the box refused the message (" + response.status + ")";
      try { message = (await response.json()).error || message; } catch (_) { /* keep */ }
      throw new Error(message);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = false;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      for (const chunk of await sealed.opener.push(value)) {
        const event = JSON.parse(decoder.decode(chunk.plaintext));
        if (event.type === "meta") {
          answer.model = event.model;
          $("model-name").textContent = event.model;
          node.querySelector("header").textContent = "Model · " + event.model;
        } else if (event.type === "delta") {
          answer.content += event.text;
          if (!pending) {
            pending = true;
            requestAnimationFrame(() => { pending = false; renderMarkdown(content, answer.content); });
          }
        } else if (event.type === "done") {
          answer.finish_reason = event.finish_reason;
          answer.usage = event.usage;
        } else if (event.type === "error") {
          failure = "the model failed: " + event.message;
        }
        if (chunk.isFinal) finished = true;
      }
    }
    // Throws if the final, marked chunk never came: the stream was cut.
    await sealed.opener.finish();
  } catch (error) {
    if (error.name === "AbortError") {
      answer.note = "Stopped.";
      answer.finish_reason = "cancelled";
    } else if (!finished) {
      failure = "The answer was REFUSED: " + (error.message || String(error)) + ". The stream was cut or tampered with; what arrived is not trusted.";
      answer.content = "";
    } else {
      failure = error.message || String(error);
    }
  } finally {
    state.streaming = null;
    $("stop").disabled = true;
    $("send").disabled = !state.verified;
  }
  if (failure) {
    answer.note = failure;
    showError(failure);
  }
  renderMarkdown(content, answer.content);
  drawThread();
  if (!failure || answer.content) {
    try { await save(conversation); } catch (error) { showError("not saved: " + error.message); }
    drawThread();
    drawConversationList();
  }
}

async function send() {
  const prompt = $("prompt").value;
  if (!prompt.trim() || state.streaming) return;
  const conversation = state.current || newConversation();
  if (!conversation.title) conversation.title = prompt.trim().slice(0, 60);
  conversation.messages.push({ role: "user", content: prompt });
  $("prompt").value = "";
  if (!conversation.ephemeral && !state.conversations.has(conversation.id)) state.conversations.set(conversation.id, conversation);
  drawThread();
  await busy(() => ask(conversation));
}

// Marks the page busy while a message is on its way (tests wait on it).
async function busy(action) {
  app.dataset.busy = "true";
  try { await action(); } finally { app.dataset.busy = "false"; }
}

async function regenerate() {
  const conversation = state.current;
  if (!conversation || state.streaming) return;
  while (conversation.messages.length && conversation.messages[conversation.messages.length - 1].role === "assistant") conversation.messages.pop();
  if (!conversation.messages.length) return;
  await busy(() => ask(conversation));
}

async function deleteConversation() {
  const conversation = state.current;
  if (!conversation) return;
  if (conversation.saved) await api("/api/history/" + conversation.id + "/delete", {});
  state.conversations.delete(conversation.id);
  state.current = null;
  drawThread();
  drawConversationList();
}

async function exportAll() {
  if (!state.historyKey) throw new Error("no history to export");
  const out = { exported_at: new Date().toISOString(), conversations: [] };
  for (const conversation of state.conversations.values()) {
    if (conversation.broken) continue;
    await loadMessages(conversation);
    out.conversations.push({ id: conversation.id, title: conversation.title, messages: conversation.messages });
  }
  const blob = new Blob([JSON.stringify(out, null, 2)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "cloister-history.json";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

async function deleteAll() {
  if (!confirm("Delete your whole history from this box? This cannot be undone.")) return;
  await api("/api/history/delete-all", {});
  state.conversations.clear();
  state.current = null;
  state.historyKey = null;
  drawThread();
  await unlockHistory();
}

async function savePolicy() {
  await api("/api/owner/chat-settings", {
    history_allowed: $("policy-allowed").checked,
    default_ephemeral: $("policy-ephemeral").checked,
  });
  location.reload();
}

function guard(action) {
  return async (event) => {
    if (event) event.preventDefault();
    showError("");
    try { await action(event); } catch (error) { showError(error.message || String(error)); }
  };
}

function on(id, kind, handler) {
  const element = $(id);
  if (element) element.addEventListener(kind, guard(handler));
}

function addControls() {
  // Controls the server-rendered shell leaves to the script.
  const actions = document.querySelector("#composer .composer-actions");
  const label = document.createElement("label");
  label.textContent = "Longest answer (tokens) ";
  const input = document.createElement("input");
  input.type = "number";
  input.id = "max-tokens";
  input.min = "1";
  input.max = "4096";
  input.value = String(DEFAULT_MAX_TOKENS);
  label.appendChild(input);
  actions.insertBefore(label, actions.firstChild);
  const accept = document.createElement("button");
  accept.type = "button";
  accept.id = "accept-measurements";
  accept.hidden = true;
  accept.textContent = "Accept the new measurements";
  $("verification").appendChild(accept);
}

async function main() {
  addControls();
  $("ephemeral").checked = app.dataset.defaultEphemeral === "true" || !state.historyAllowed;
  $("ephemeral").disabled = !state.historyAllowed;
  on("composer", "submit", send);
  on("stop", "click", () => { if (state.streaming) state.streaming.abort(); });
  on("regenerate", "click", regenerate);
  on("new-conversation", "click", () => { if (!state.streaming) newConversation(); });
  on("delete-conversation", "click", deleteConversation);
  on("export-history", "click", exportAll);
  on("delete-history", "click", deleteAll);
  on("unlock-history", "click", unlockWithAnotherPasskey);
  on("verify-again", "click", () => verify());
  on("history-policy-form", "submit", savePolicy);
  on("accept-measurements", "click", () => verify(true));
  on("ephemeral", "change", () => {
    if (state.current && !state.current.messages.length) state.current.ephemeral = $("ephemeral").checked;
  });
  await Promise.all([
    verify(),
    unlockHistory().catch((error) => { $("history-state").textContent = "History unavailable: " + error.message; }),
  ]);
  app.dataset.ready = "true";
}

main();
