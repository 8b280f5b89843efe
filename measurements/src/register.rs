//! A measurement register (MRTD or an RTMR) and its one operation, extend:
//! `new = SHA-384(old || digest)`, starting from 48 zero bytes.
//!
//! Pure computation; never I/O.

use sha2::{Digest, Sha384};

/// A SHA-384 digest, the size of every TDX measurement register.
pub type Digest48 = [u8; 48];

/// SHA-384 of `bytes`.
pub fn sha384(bytes: &[u8]) -> Digest48 {
    Sha384::digest(bytes).into()
}

/// A runtime measurement register as the TDX module keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Register(pub Digest48);

impl Default for Register {
    fn default() -> Self {
        Register([0u8; 48])
    }
}

impl Register {
    /// Extends the register with a digest: `SHA-384(self || digest)`.
    pub fn extend(&mut self, digest: &Digest48) {
        let mut h = Sha384::new();
        h.update(self.0);
        h.update(digest);
        self.0 = h.finalize().into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_is_sha384_of_old_and_digest() {
        let mut r = Register::default();
        let d = sha384(b"event");
        r.extend(&d);
        let mut cat = vec![0u8; 48];
        cat.extend_from_slice(&d);
        assert_eq!(r.0, sha384(&cat));
        // Order matters: extending with a then b differs from b then a.
        let (a, b) = (sha384(b"a"), sha384(b"b"));
        let (mut x, mut y) = (Register::default(), Register::default());
        x.extend(&a);
        x.extend(&b);
        y.extend(&b);
        y.extend(&a);
        assert_ne!(x, y);
    }
}
