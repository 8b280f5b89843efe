// Cloister's only script. It runs the passkey ceremonies and the console's buttons.
// It asks for the WebAuthn PRF extension and keeps its output in this tab only
// (sessionStorage): the output is the user's history key and must never reach the server,
// so it is removed from every credential before anything is sent.
"use strict";

const PRF_STORAGE_KEY = "cloister.prf.first";
// Which passkey gave it: the chat finds that passkey's wrapped history key by it.
const PRF_CREDENTIAL_KEY = "cloister.prf.credential";

function b64url(bytes) {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function say(text) {
  const message = document.getElementById("message");
  if (message) message.textContent = text;
}

async function prfSalt() {
  // A fixed, public salt: the secret is in the authenticator.
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode("cloister history key v1"));
  return b64url(digest);
}

async function post(path, body) {
  const token = document.querySelector('meta[name="csrf-token"]').content;
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrf-token": token },
    body: JSON.stringify(body || {}),
  });
  let data = {};
  try { data = await response.json(); } catch (_) { data = {}; }
  if (!response.ok) throw new Error(data.error || ("the box answered " + response.status));
  return data;
}

// Keeps the PRF output in the tab and returns the credential's JSON without it.
function withoutPrf(credential) {
  const results = credential.getClientExtensionResults();
  if (results.prf && results.prf.results && results.prf.results.first) {
    sessionStorage.setItem(PRF_STORAGE_KEY, b64url(results.prf.results.first));
    sessionStorage.setItem(PRF_CREDENTIAL_KEY, credential.id);
  }
  const json = credential.toJSON();
  if (json.clientExtensionResults) delete json.clientExtensionResults.prf;
  return json;
}

async function register(beginPath, finishPath, body) {
  const begun = await post(beginPath, body);
  const options = begun.options.publicKey;
  options.extensions = Object.assign({}, options.extensions, { prf: { eval: { first: await prfSalt() } } });
  const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(options);
  const credential = await navigator.credentials.create({ publicKey });
  const finished = await post(finishPath, { ceremony: begun.ceremony, credential: withoutPrf(credential) });
  location.assign(finished.next || "/");
}

async function signIn() {
  const begun = await post("/api/signin/begin", {});
  const options = begun.options.publicKey;
  options.extensions = Object.assign({}, options.extensions, { prf: { eval: { first: await prfSalt() } } });
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(options);
  const credential = await navigator.credentials.get({ publicKey });
  const finished = await post("/api/signin/finish", { ceremony: begun.ceremony, credential: withoutPrf(credential) });
  location.assign(finished.next || "/");
}

function guard(action) {
  return async (event) => {
    if (event) event.preventDefault();
    say("");
    try { await action(event); } catch (error) { say(error.message || String(error)); }
  };
}

function on(id, kind, handler) {
  const element = document.getElementById(id);
  if (element) element.addEventListener(kind, guard(handler));
}

document.addEventListener("DOMContentLoaded", () => {
  on("sign-in", "click", signIn);
  on("sign-out", "click", async () => {
    sessionStorage.removeItem(PRF_STORAGE_KEY);
    sessionStorage.removeItem(PRF_CREDENTIAL_KEY);
    const finished = await post("/api/signout", {});
    location.assign(finished.next || "/");
  });
  on("setup-form", "submit", () => register("/api/setup/begin", "/api/setup/finish", {
    code: document.getElementById("setup-code").value.trim(),
    name: document.getElementById("setup-name").value.trim(),
  }));
  on("accept-invitation", "click", () => {
    const token = location.hash.replace(/^#/, "");
    return register("/api/invite/begin", "/api/invite/finish", { token });
  });
  on("add-passkey", "click", () => register("/api/passkeys/begin", "/api/passkeys/finish", { label: "" }));
  on("invite-form", "submit", async () => {
    const name = document.getElementById("invite-name").value.trim();
    const created = await post("/api/owner/invitations", { name });
    document.getElementById("invite-link").textContent = created.link;
  });
  // The console's long values show cut to fit; their button copies the whole value.
  for (const button of document.querySelectorAll("button.copy[data-copy]")) {
    button.addEventListener("click", guard(async () => {
      await navigator.clipboard.writeText(button.dataset.copy);
      say("Copied.");
    }));
  }
  for (const button of document.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", guard(async () => {
      const id = button.dataset.id;
      const paths = {
        "revoke-user": "/api/owner/users/" + id + "/revoke",
        "revoke-passkey": "/api/owner/passkeys/" + id + "/revoke",
        "withdraw-invitation": "/api/owner/invitations/" + id + "/withdraw",
      };
      await post(paths[button.dataset.action], {});
      location.reload();
    }));
  }
});
