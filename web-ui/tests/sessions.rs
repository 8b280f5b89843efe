//! Session cookies against a running server: attributes, rotation to a new token (the old
//! one stops working at once), and the absolute limit from sign-in. The policy is shortened
//! to seconds; the session is opened through the store, as a finished sign-in would.

mod common;

use std::time::Duration;

use cloister_web_ui::auth::SessionPolicy;
use cloister_web_ui::config::Settings;
use cloister_web_ui::store::{StoredPasskey, User};

async fn get(address: std::net::SocketAddr, path: &str, session: &str) -> String {
    let mut stream = common::tls_connect(address, "localhost").await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nCookie: __Host-session={session}\r\nConnection: close\r\n\r\n"
    );
    String::from_utf8_lossy(
        &common::exchange(&mut stream, request.as_bytes(), Duration::from_secs(5)).await,
    )
    .into_owned()
}

fn new_session_token(answer: &str) -> Option<String> {
    answer
        .lines()
        .filter_map(|line| line.strip_prefix("set-cookie: __Host-session="))
        .map(|rest| rest.split(';').next().unwrap_or("").to_owned())
        .next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_rotate_and_end_at_the_absolute_limit() {
    let state = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(state.path().join("state"));
    settings.listen_address = [127, 0, 0, 1].into();
    settings.https_port = 0;
    settings.http_port = None;
    settings.supervisor_socket = state.path().join("none.sock");
    settings.sessions = SessionPolicy {
        lifetime_s: 60,
        rotate_after_s: 1,
        absolute_max_s: 5,
    };
    let server = cloister_web_ui::start(settings).await.unwrap();
    let store = &server.state.store;
    let now = cloister_web_ui::clock::now_s();
    let owner = User {
        id: [7; 16],
        name: "Olivia".into(),
        is_owner: true,
        created_at_s: now,
        revoked: false,
    };
    let passkey = StoredPasskey {
        credential_id: vec![7; 32],
        user_id: owner.id,
        passkey_json: "{}".into(),
        label: "passkey 1".into(),
        created_at_s: now,
        last_used_at_s: 0,
    };
    assert!(
        store
            .create_owner_with_code(server.setup_code.as_deref().unwrap(), &owner, &passkey, now)
            .unwrap()
    );
    let first = "a".repeat(64);
    store
        .create_session(&first, &owner.id, now, now + 60, now)
        .unwrap();

    let answer = get(server.https_address, "/console", &first).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("id=\"services\""));
    assert!(new_session_token(&answer).is_none(), "too early to rotate");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let answer = get(server.https_address, "/console", &first).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let second = new_session_token(&answer).expect("the session was rotated");
    assert_ne!(second, first);
    let cookie_line = answer
        .lines()
        .find(|l| l.starts_with("set-cookie: __Host-session="))
        .unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie_line.contains(attribute), "{cookie_line}");
    }
    // The old token is dead; the new one works.
    let answer = get(server.https_address, "/console", &first).await;
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let answer = get(server.https_address, "/api/owner/status", &second).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Past the absolute limit from sign-in, even a fresh token is refused.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let answer = get(server.https_address, "/api/owner/status", &second).await;
    let rotated = new_session_token(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    if let Some(third) = rotated {
        let answer = get(server.https_address, "/api/owner/status", &third).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }
    server.stop().await;
}
