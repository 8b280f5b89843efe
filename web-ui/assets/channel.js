// The browser side of the attested channel (docs/protocol.md, section 4): seals a request
// to the TD's HPKE key and opens the chunked sealed response as it streams in.
//
// HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) is the
// vendored @hpke/core (./vendor/, pinned, see vendor/README.md); the response chunks use
// WebCrypto's HKDF and AES-GCM directly. The Rust twin is the cloister-protocol crate; both
// pass protocol/vectors/v1.json (web-ui/tests/protocol_vectors_browser.rs).
//
// This module must never log, store or send plaintext or keys, and must never hand out a
// chunk it could not authenticate. A response is complete only when the opener has read the
// final chunk: a stream that ends earlier throws ChannelError("truncated").

import {
  Aes256Gcm,
  CipherSuite,
  DhkemX25519HkdfSha256,
  HkdfSha256,
} from "./vendor/hpke-core-1.9.0.js";

export const KEM_ID = 0x0020;
export const KDF_ID = 0x0001;
export const AEAD_ID = 0x0002;
export const PUBLIC_KEY_BYTES = 32;
export const MAX_REQUEST_PLAINTEXT_BYTES = 1 << 20;
export const MAX_CHUNK_PLAINTEXT_BYTES = 1 << 16;

const REQUEST_HEADER_BYTES = 7;
const RESPONSE_NONCE_BYTES = 32;
const AEAD_TAG_BYTES = 16;
const MAX_SEALED_CHUNK_BYTES = MAX_CHUNK_PLAINTEXT_BYTES + AEAD_TAG_BYTES;
const ascii = (text) => new TextEncoder().encode(text);
const REQUEST_INFO_LABEL = ascii("cloister chat request");
const RESPONSE_EXPORT_LABEL = ascii("cloister chat response");
const FINAL_CHUNK_AAD = ascii("final");

/**
 * Why a request could not be sealed or a response could not be read. `code` is one of
 * "invalid_public_key", "request_too_large", "truncated", "chunk_open_failed",
 * "chunk_too_large", "chunk_too_short", "data_after_final", "stream_failed".
 */
export class ChannelError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "ChannelError";
    this.code = code;
  }
}

const suite = new CipherSuite({
  kem: new DhkemX25519HkdfSha256(),
  kdf: new HkdfSha256(),
  aead: new Aes256Gcm(),
});

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** The 7-byte request header: key id, then the KEM, KDF and AEAD ids big-endian. */
function requestHeader(keyId) {
  return new Uint8Array([
    keyId & 0xff, KEM_ID >> 8, KEM_ID & 0xff, KDF_ID >> 8, KDF_ID & 0xff, AEAD_ID >> 8, AEAD_ID & 0xff,
  ]);
}

/**
 * Seals `plaintextBytes` (the inner request JSON, as bytes) to the TD's key.
 * `publicKey` is the 32-byte X25519 key of the verified attestation bundle and `keyId` its
 * `hpke_key_id`. Returns `{ body, opener }`: POST `body`, then read the response with
 * `opener.open(response.body)`.
 * `options.ephemeralSeed` (32 bytes) fixes the ephemeral key: for the test vectors only.
 */
export async function sealRequest(publicKey, keyId, plaintextBytes, options = {}) {
  const key = new Uint8Array(publicKey);
  if (key.length !== PUBLIC_KEY_BYTES) {
    throw new ChannelError("invalid_public_key", `the public key is ${key.length} bytes, not 32`);
  }
  if (!Number.isInteger(keyId) || keyId < 0 || keyId > 255) {
    throw new ChannelError("invalid_public_key", "the key id is not a byte");
  }
  const plaintext = new Uint8Array(plaintextBytes);
  if (plaintext.length > MAX_REQUEST_PLAINTEXT_BYTES) {
    throw new ChannelError("request_too_large", `the request is ${plaintext.length} bytes; at most ${MAX_REQUEST_PLAINTEXT_BYTES} are allowed`);
  }
  let recipientPublicKey;
  try {
    recipientPublicKey = await suite.kem.deserializePublicKey(key.slice().buffer);
  } catch {
    throw new ChannelError("invalid_public_key", "the public key is not a valid X25519 key");
  }
  const header = requestHeader(keyId);
  const params = { recipientPublicKey, info: concat(REQUEST_INFO_LABEL, new Uint8Array([0]), header).buffer };
  if (options.ephemeralSeed !== undefined) {
    params.ekm = new Uint8Array(options.ephemeralSeed).slice().buffer;
  }
  const sender = await suite.createSenderContext(params);
  const sealed = new Uint8Array(await sender.seal(plaintext.slice().buffer, new Uint8Array(0).buffer));
  const secret = new Uint8Array(await sender.export(RESPONSE_EXPORT_LABEL.buffer, RESPONSE_NONCE_BYTES));
  const enc = new Uint8Array(sender.enc);
  return { body: concat(header, enc, sealed), opener: new ResponseOpener(enc, secret) };
}

/** A QUIC varint at `bytes[offset]`: `[value, length]`, or null if more bytes are needed. */
function readVarint(bytes, offset) {
  if (offset >= bytes.length) return null;
  const length = 1 << (bytes[offset] >> 6);
  if (offset + length > bytes.length) return null;
  let value = bytes[offset] & 0x3f;
  for (let i = 1; i < length; i++) value = value * 256 + bytes[offset + i];
  return [value, length];
}

/**
 * Reads one sealed response. Either `for await (const plaintext of opener.open(stream))`
 * over a ReadableStream of bytes, or `await opener.push(bytes)` per piece (one at a time)
 * and `opener.finish()` at the end.
 */
export class ResponseOpener {
  #enc;
  #secret;
  #keys = null; // { key: CryptoKey, baseNonce: Uint8Array } once the nonce has arrived
  #buffer = new Uint8Array(0);
  #counter = 0;
  #finished = false;
  #failed = false;

  constructor(enc, secret) {
    this.#enc = enc;
    this.#secret = secret;
  }

  /** True once the final chunk has been opened. */
  get finished() {
    return this.#finished;
  }

  /** Consumes bytes; returns the chunks they complete, as `{ plaintext, isFinal }`. */
  async push(bytes) {
    if (this.#failed) throw new ChannelError("stream_failed", "an earlier error ended this response stream");
    this.#buffer = concat(this.#buffer, new Uint8Array(bytes));
    try {
      return await this.#drain();
    } catch (error) {
      this.#failed = true;
      this.#buffer = new Uint8Array(0);
      throw error;
    }
  }

  /** Declares the end of the body; throws unless the final chunk was read and nothing followed. */
  finish() {
    if (this.#failed) throw new ChannelError("stream_failed", "an earlier error ended this response stream");
    if (!this.#finished) throw new ChannelError("truncated", "the response ended before its final chunk: it was truncated");
    if (this.#buffer.length > 0) throw new ChannelError("data_after_final", "bytes follow the final response chunk");
  }

  /** Yields each chunk's plaintext (Uint8Array) from a ReadableStream, then checks the end. */
  async *open(stream) {
    const reader = stream.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        for (const chunk of await this.push(value)) yield chunk.plaintext;
      }
      this.finish();
    } finally {
      reader.releaseLock();
    }
  }

  async #deriveKeys(responseNonce) {
    const salt = concat(this.#enc, responseNonce);
    const ikm = await crypto.subtle.importKey("raw", this.#secret, "HKDF", false, ["deriveBits"]);
    const expand = (label, bits) =>
      crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info: ascii(label) }, ikm, bits);
    const rawKey = await expand("key", 256);
    const baseNonce = new Uint8Array(await expand("nonce", 96));
    const key = await crypto.subtle.importKey("raw", rawKey, "AES-GCM", false, ["decrypt"]);
    return { key, baseNonce };
  }

  #chunkNonce() {
    const nonce = this.#keys.baseNonce.slice();
    let counter = this.#counter;
    for (let i = 11; i >= 4 && counter > 0; i--) {
      nonce[i] ^= counter % 256;
      counter = Math.floor(counter / 256);
    }
    return nonce;
  }

  async #drain() {
    const chunks = [];
    let offset = 0;
    for (;;) {
      const rest = this.#buffer.length - offset;
      if (this.#finished) {
        if (rest > 0) throw new ChannelError("data_after_final", "bytes follow the final response chunk");
        break;
      }
      if (this.#keys === null) {
        if (rest < RESPONSE_NONCE_BYTES) break;
        this.#keys = await this.#deriveKeys(this.#buffer.slice(offset, offset + RESPONSE_NONCE_BYTES));
        offset += RESPONSE_NONCE_BYTES;
        continue;
      }
      const first = readVarint(this.#buffer, offset);
      if (first === null) break;
      let isFinal = false;
      let length = first[0];
      let headerBytes = first[1];
      if (first[0] === 0) {
        const second = readVarint(this.#buffer, offset + first[1]);
        if (second === null) break;
        isFinal = true;
        length = second[0];
        headerBytes += second[1];
      }
      if (length > MAX_SEALED_CHUNK_BYTES) {
        throw new ChannelError("chunk_too_large", `a response chunk of ${length} bytes exceeds the limit of ${MAX_SEALED_CHUNK_BYTES}`);
      }
      if (length < AEAD_TAG_BYTES) {
        throw new ChannelError("chunk_too_short", `response chunk ${this.#counter} is ${length} bytes, too short to hold its tag`);
      }
      if (rest < headerBytes + length) break;
      const start = offset + headerBytes;
      const sealed = this.#buffer.slice(start, start + length);
      let plaintext;
      try {
        plaintext = new Uint8Array(await crypto.subtle.decrypt(
          { name: "AES-GCM", iv: this.#chunkNonce(), additionalData: isFinal ? FINAL_CHUNK_AAD : new Uint8Array(0), tagLength: 128 },
          this.#keys.key,
          sealed,
        ));
      } catch {
        throw new ChannelError("chunk_open_failed", `response chunk ${this.#counter} could not be opened: altered, reordered or not for this request`);
      }
      offset = start + length;
      chunks.push({ plaintext, isFinal });
      if (isFinal) this.#finished = true;
      else this.#counter += 1;
    }
    this.#buffer = this.#buffer.slice(offset);
    return chunks;
  }
}
