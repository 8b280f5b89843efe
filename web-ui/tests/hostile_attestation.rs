//! `/attestation` under a flood from one address (issue 14): behind a NAT or a proxy every
//! client shares it, so the flood must not stop anyone else's verification. A signed-in user
//! has a budget of fresh quotes nobody else can spend; a client that asks again with the
//! same nonce gets the same bundle, free; a fresh nonce never gets a bundle made for
//! another. Through the real `web-ui` binary under the simulated TEE.
//!
//! Run with `cargo test -p cloister-web-ui --features simulated-tee --test hostile_attestation`.

#![cfg(feature = "simulated-tee")]

mod chat_common;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

async fn attestation(address: SocketAddr, nonce: &[u8], session: Option<&str>) -> (u16, String) {
    let cookie = session
        .map(|token| format!("Cookie: __Host-session={token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /attestation?nonce={} HTTP/1.1\r\nHost: localhost\r\n{cookie}Connection: close\r\n\r\n",
        hex::encode(nonce)
    );
    let mut stream = common::tls_connect(address, "localhost").await;
    let answer = common::exchange(&mut stream, request.as_bytes(), Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (common::status_of(&answer).unwrap_or(0), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attestation_flood_leaves_verification_working() {
    let root = tempfile::tempdir().unwrap();
    let measurements = root.path().join("measurements.json");
    std::fs::write(&measurements, chat_common::measurements_json("firmware")).unwrap();
    // No model-runner: attestation does not need one.
    let web_ui = chat_common::start_web_ui(
        root.path(),
        &measurements,
        "127.0.0.1:9".parse().unwrap(),
        &["--attestations-per-minute", "10"],
    );
    let address = web_ui.address;
    let (_owner, session) = chat_common::owner(&web_ui, 3);

    // A client without a session, asking again with one nonce, gets the same bundle free.
    let repeated = [1u8; 32];
    let (status, first) = attestation(address, &repeated, None).await;
    assert_eq!(status, 200);
    // The flood: fresh nonces from the same address until it is refused.
    let mut refused = false;
    for i in 0..40u8 {
        let (status, _) = attestation(address, &[i; 24], None).await;
        if status == 429 {
            refused = true;
            break;
        }
        assert_eq!(status, 200);
    }
    assert!(refused, "the address's budget was never spent");
    let (status, again) = attestation(address, &repeated, None).await;
    assert_eq!(status, 200, "a repeated nonce is refused during the flood");
    assert_eq!(again, first, "a repeated nonce got a new bundle");
    // A fresh nonce without a session is not answered with a bundle for another.
    let (status, _) = attestation(address, &[0xee; 32], None).await;
    assert_eq!(status, 429);

    // The signed-in user, at the same address, still gets fresh quotes for its nonces.
    for n in 0..3u8 {
        let nonce = [0xa0 + n; 32];
        let (status, body) = attestation(address, &nonce, Some(&session)).await;
        assert_eq!(status, 200, "a signed-in user was refused during the flood");
        let bundle: serde_json::Value = serde_json::from_str(&body).unwrap();
        let served = bundle["nonce"].to_string();
        assert!(
            served.contains(&hex::encode(nonce)),
            "the bundle is not for this nonce: {served}"
        );
    }
    // And the address's budget refills smoothly: a fresh nonce is answered within seconds.
    let started = std::time::Instant::now();
    let mut status = 0;
    while started.elapsed() < Duration::from_secs(10) {
        status = attestation(address, &[0xef; 32], None).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(status, 200, "the address is still refused after 10 s");
    assert!(started.elapsed() < Duration::from_secs(8));
}
