// History encryption, in the browser only. The server stores what this module makes and
// can open none of it.
//
// - The passkey's PRF output (kept by app.js in this tab's sessionStorage, never sent) is
//   turned into a key-encryption key: HKDF-SHA256(ikm = PRF output, salt = the credential id
//   as base64url text, info = "cloister history kek v1") -> AES-256-GCM key.
// - The history key is 32 random bytes. Each passkey gets one wrapped copy:
//   0x01 || iv (12) || AES-GCM(kek, iv, history key, aad = "cloister history key v1|" + id),
//   61 bytes.
// - Each conversation is two blobs (its title, its messages), each
//   0x01 || iv (12) || AES-GCM(history key, iv, padded, aad = "cloister history blob v1|" +
//   kind + "|" + conversation id), where padded = 4-byte big-endian length || UTF-8 JSON ||
//   zeros, so that the blob is exactly one of BUCKETS bytes long. The AAD ties a blob to its
//   conversation and its role, so the server cannot swap blobs around unnoticed.
"use strict";

export const PRF_STORAGE_KEY = "cloister.prf.first";
export const PRF_CREDENTIAL_KEY = "cloister.prf.credential";
export const BUCKETS = [256, 1024, 4096, 16384, 65536, 262144, 1048576];
export const WRAPPED_KEY_BYTES = 61;
const VERSION = 1;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const OVERHEAD = 1 + IV_BYTES + TAG_BYTES;
const LENGTH_BYTES = 4;
const KEK_INFO = "cloister history kek v1";
const KEY_AAD = "cloister history key v1|";
const BLOB_AAD = "cloister history blob v1|";
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

export function b64(bytes) {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text);
}

export function unb64(text) {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) out[i] = binary.charCodeAt(i);
  return out;
}

export function b64url(bytes) {
  return b64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function unb64url(text) {
  const padded = text.replace(/-/g, "+").replace(/_/g, "/");
  return unb64(padded + "===".slice((padded.length + 3) % 4));
}

// The PRF output and credential of this tab's sign-in, or null.
export function signedInPrf() {
  const prf = sessionStorage.getItem(PRF_STORAGE_KEY);
  const credentialId = sessionStorage.getItem(PRF_CREDENTIAL_KEY);
  if (!prf || !credentialId) return null;
  return { prf: unb64url(prf), credentialId };
}

// The salt app.js asks the authenticator's PRF to evaluate (public; the secret is inside
// the authenticator).
export async function prfSalt() {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode("cloister history key v1")));
}

async function kek(prf, credentialId) {
  const base = await crypto.subtle.importKey("raw", prf, "HKDF", false, ["deriveKey"]);
  return crypto.subtle.deriveKey(
    { name: "HKDF", hash: "SHA-256", salt: encoder.encode(credentialId), info: encoder.encode(KEK_INFO) },
    base,
    { name: "AES-GCM", length: 256 },
    false,
    ["encrypt", "decrypt"],
  );
}

function randomBytes(n) {
  return crypto.getRandomValues(new Uint8Array(n));
}

export function newHistoryKey() {
  return randomBytes(32);
}

export async function wrapHistoryKey(rawKey, prf, credentialId) {
  const key = await kek(prf, credentialId);
  const iv = randomBytes(IV_BYTES);
  const sealed = new Uint8Array(await crypto.subtle.encrypt(
    { name: "AES-GCM", iv, additionalData: encoder.encode(KEY_AAD + credentialId) }, key, rawKey));
  const out = new Uint8Array(1 + IV_BYTES + sealed.length);
  out[0] = VERSION;
  out.set(iv, 1);
  out.set(sealed, 1 + IV_BYTES);
  return out;
}

export async function unwrapHistoryKey(wrapped, prf, credentialId) {
  if (wrapped.length !== WRAPPED_KEY_BYTES || wrapped[0] !== VERSION) throw new Error("the stored history key has an unknown format");
  const key = await kek(prf, credentialId);
  const raw = await crypto.subtle.decrypt(
    { name: "AES-GCM", iv: wrapped.slice(1, 1 + IV_BYTES), additionalData: encoder.encode(KEY_AAD + credentialId) },
    key,
    wrapped.slice(1 + IV_BYTES),
  );
  return new Uint8Array(raw);
}

// The smallest bucket that holds `plaintextLength` bytes of JSON, or null if none does.
export function bucketFor(plaintextLength) {
  for (const size of BUCKETS) if (plaintextLength + LENGTH_BYTES + OVERHEAD <= size) return size;
  return null;
}

async function blobKey(rawKey) {
  return crypto.subtle.importKey("raw", rawKey, "AES-GCM", false, ["encrypt", "decrypt"]);
}

// Encrypts `value` (JSON) as a bucket-sized blob of role `kind` for conversation `id`.
export async function sealBlob(rawKey, kind, id, value) {
  const json = encoder.encode(JSON.stringify(value));
  const size = bucketFor(json.length);
  if (size === null) throw new Error("this conversation is too long to save (over 1 MiB)");
  const padded = new Uint8Array(size - OVERHEAD);
  new DataView(padded.buffer).setUint32(0, json.length);
  padded.set(json, LENGTH_BYTES);
  const iv = randomBytes(IV_BYTES);
  const sealed = new Uint8Array(await crypto.subtle.encrypt(
    { name: "AES-GCM", iv, additionalData: encoder.encode(BLOB_AAD + kind + "|" + id) }, await blobKey(rawKey), padded));
  const out = new Uint8Array(size);
  out[0] = VERSION;
  out.set(iv, 1);
  out.set(sealed, 1 + IV_BYTES);
  return out;
}

export async function openBlob(rawKey, kind, id, blob) {
  if (!BUCKETS.includes(blob.length) || blob[0] !== VERSION) throw new Error("a stored conversation has an unknown format");
  const padded = new Uint8Array(await crypto.subtle.decrypt(
    { name: "AES-GCM", iv: blob.slice(1, 1 + IV_BYTES), additionalData: encoder.encode(BLOB_AAD + kind + "|" + id) },
    await blobKey(rawKey),
    blob.slice(1 + IV_BYTES),
  ));
  const length = new DataView(padded.buffer).getUint32(0);
  if (length > padded.length - LENGTH_BYTES) throw new Error("a stored conversation is damaged");
  return JSON.parse(decoder.decode(padded.slice(LENGTH_BYTES, LENGTH_BYTES + length)));
}

// Asks one of `credentialIds` (base64url) for its PRF output without any server round trip:
// the assertion is not sent anywhere, only its PRF result is used, here.
export async function prfFromPasskey(credentialIds) {
  const credential = await navigator.credentials.get({
    publicKey: {
      challenge: randomBytes(32),
      allowCredentials: credentialIds.map((id) => ({ type: "public-key", id: unb64url(id) })),
      userVerification: "preferred",
      extensions: { prf: { eval: { first: await prfSalt() } } },
    },
  });
  const results = credential.getClientExtensionResults();
  if (!results.prf || !results.prf.results || !results.prf.results.first) throw new Error("this passkey gives no PRF output, so it cannot open the history");
  return { prf: new Uint8Array(results.prf.results.first), credentialId: credential.id };
}
