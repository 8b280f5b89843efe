//! The JSON bodies the browser sends, and their one parser. Every body goes through
//! [`parse_body`], which answers a fixed message on failure: serde's own messages quote the
//! input, and the input may hold a secret (a setup code, an invitation token).
//!
//! Credentials from the browser must not carry `clientExtensionResults.prf`: the PRF
//! output is the user's history key and stays in the browser. A body that carries it is
//! refused, so a front-end bug is loud instead of silently leaking.

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Largest JSON body accepted, in bytes (a WebAuthn response is a few KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why a body was refused; the text is ours, never the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Too large.
    #[error("the request body is too large")]
    TooLarge,
    /// Not UTF-8 JSON of the expected shape.
    #[error("the request body is not valid")]
    Malformed,
    /// A credential carried the PRF output.
    #[error("the PRF output must stay in the browser")]
    CarriesPrf,
}

/// Parses a JSON body of type `T`.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(BodyError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| BodyError::Malformed)?;
    serde_json::from_str(text).map_err(|_| BodyError::Malformed)
}

/// Whether a credential JSON carries PRF results anywhere the browser could put them.
pub fn carries_prf(credential: &serde_json::Value) -> bool {
    ["clientExtensionResults", "extensions"]
        .iter()
        .filter_map(|key| credential.get(key))
        .any(|results| results.get("prf").is_some())
}

/// `POST /api/setup/begin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupBegin {
    /// The one-time code printed on the box's console.
    pub code: String,
    /// The owner's name.
    pub name: String,
}

/// `POST /api/invite/begin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteBegin {
    /// The invitation token from the link's fragment.
    pub token: String,
}

/// `POST /api/passkeys/begin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPasskeyBegin {
    /// A label for the new passkey ("phone").
    #[serde(default)]
    pub label: String,
}

/// `POST /api/*/finish`: the ceremony and what the authenticator returned.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeremonyFinish {
    /// The ceremony's id from its begin answer.
    pub ceremony: String,
    /// The credential, as `PublicKeyCredential.toJSON()` gives it, PRF removed.
    pub credential: serde_json::Value,
}

/// `POST /api/owner/invitations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    /// The name of the person invited.
    pub name: String,
}

/// An empty body (`{}`), for actions named by their URL.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Whether a display name is acceptable: 1 to 64 characters, no control characters.
pub fn is_valid_name(name: &str) -> bool {
    let count = name.chars().count();
    (1..=64).contains(&count) && !name.chars().any(char::is_control) && name.trim() == name
}

/// Runs every parser on `data`; for the fuzz target and its corpus test.
pub fn parse_everything(data: &[u8]) {
    let _ = parse_body::<SetupBegin>(data);
    let _ = parse_body::<InviteBegin>(data);
    let _ = parse_body::<AddPasskeyBegin>(data);
    let _ = parse_body::<CreateInvitation>(data);
    let _ = parse_body::<Empty>(data);
    if let Ok(finish) = parse_body::<CeremonyFinish>(data) {
        let _ = carries_prf(&finish.credential);
        let _ = serde_json::from_value::<webauthn_rs::prelude::RegisterPublicKeyCredential>(
            finish.credential.clone(),
        );
        let _ =
            serde_json::from_value::<webauthn_rs::prelude::PublicKeyCredential>(finish.credential);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_quote_the_input() {
        let secret = "CODE-SECRET-42";
        let body = format!("{{\"code\": 5, \"name\": \"{secret}\"}}");
        let error = parse_body::<SetupBegin>(body.as_bytes()).unwrap_err();
        assert!(!error.to_string().contains(secret));
        assert_eq!(error, BodyError::Malformed);
    }

    #[test]
    fn bad_utf8_oversize_and_unknown_fields_are_refused() {
        assert_eq!(
            parse_body::<InviteBegin>(b"{\"token\": \"\xff\"}").unwrap_err(),
            BodyError::Malformed
        );
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(parse_body::<Empty>(&huge).unwrap_err(), BodyError::TooLarge);
        assert_eq!(
            parse_body::<InviteBegin>(b"{\"token\":\"a\",\"admin\":true}").unwrap_err(),
            BodyError::Malformed
        );
        assert_eq!(
            parse_body::<InviteBegin>(b"{\"token\":\"a\"}")
                .unwrap()
                .token,
            "a"
        );
    }

    #[test]
    fn prf_results_are_detected() {
        let with: serde_json::Value = serde_json::from_str(
            r#"{"id":"x","clientExtensionResults":{"prf":{"results":{"first":"AAAA"}}}}"#,
        )
        .unwrap();
        let without: serde_json::Value = serde_json::from_str(
            r#"{"id":"x","clientExtensionResults":{"credProps":{"rk":true}}}"#,
        )
        .unwrap();
        assert!(carries_prf(&with));
        assert!(!carries_prf(&without));
    }

    #[test]
    fn names_are_checked() {
        assert!(is_valid_name("Alice"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(" Alice"));
        assert!(!is_valid_name("a\nb"));
        assert!(!is_valid_name(&"x".repeat(65)));
    }

    #[test]
    fn the_fuzz_corpus_never_panics() {
        for input in [
            &b""[..],
            b"{}",
            b"{\"ceremony\":\"a\",\"credential\":{}}",
            b"{\"ceremony\":\"a\",\"credential\":{\"id\":1,\"rawId\":\"!!\",\"response\":{}}}",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
            b"{\"code\":\"\\ud800\",\"name\":\"x\"}",
            b"\xff\xfe\x00",
        ] {
            parse_everything(input);
        }
    }
}
