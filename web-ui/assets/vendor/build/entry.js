// The parts of @hpke/core that web-ui/assets/channel.js uses: the cipher suite of
// docs/protocol.md (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) and its errors.
export {
  Aes256Gcm,
  CipherSuite,
  DhkemX25519HkdfSha256,
  HkdfSha256,
  HpkeError,
  OpenError,
} from "@hpke/core";
