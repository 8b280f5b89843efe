//! The owner's API over HTTPS, with a session opened through the store as a finished
//! sign-in would: invitations (create, withdraw), revoking a passkey, refusing to revoke the
//! owner's last passkey, and non-owners refused.

mod common;

use std::time::Duration;

use cloister_web_ui::config::Settings;
use cloister_web_ui::store::{StoredPasskey, User};

const CSRF: &str = "0123456789abcdef0123456789abcdef";

async fn post(
    address: std::net::SocketAddr,
    path: &str,
    session: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = common::tls_connect(address, "localhost").await;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n\
Cookie: __Host-session={session}; __Host-csrf={CSRF}\r\nX-CSRF-Token: {CSRF}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = common::exchange(&mut stream, request.as_bytes(), Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    (common::status_of(&answer).unwrap_or(0), text)
}

fn person(byte: u8, name: &str, is_owner: bool, now: i64) -> (User, StoredPasskey) {
    let user = User {
        id: [byte; 16],
        name: name.into(),
        is_owner,
        created_at_s: now,
        revoked: false,
    };
    let passkey = StoredPasskey {
        credential_id: vec![byte; 32],
        user_id: user.id,
        passkey_json: "{}".into(),
        label: "passkey 1".into(),
        created_at_s: now,
        last_used_at_s: 0,
    };
    (user, passkey)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_manages_invitations_and_passkeys() {
    let state = tempfile::tempdir().unwrap();
    let mut settings = Settings::new(state.path().join("state"));
    settings.listen_address = [127, 0, 0, 1].into();
    settings.https_port = 0;
    settings.http_port = None;
    settings.supervisor_socket = state.path().join("none.sock");
    let server = cloister_web_ui::start(settings).await.unwrap();
    let address = server.https_address;
    let store = &server.state.store;
    let now = cloister_web_ui::clock::now_s();
    let (owner, owner_key) = person(1, "Olivia", true, now);
    assert!(
        store
            .create_owner_with_code(
                server.setup_code.as_deref().unwrap(),
                &owner,
                &owner_key,
                now
            )
            .unwrap()
    );
    let owner_session = "b".repeat(64);
    store
        .create_session(&owner_session, &owner.id, now, now + 600, now)
        .unwrap();

    // An invitation: the link is shown once, the store keeps only a hash.
    let (status, answer) = post(
        address,
        "/api/owner/invitations",
        &owner_session,
        "{\"name\":\"Carol\"}",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let token = answer
        .split("/invite#")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 64);
    assert_eq!(
        store.invitation_name(&token, now).unwrap().as_deref(),
        Some("Carol")
    );
    let handle = store.invitations().unwrap()[0].handle.clone();
    let (status, _) = post(
        address,
        &format!("/api/owner/invitations/{handle}/withdraw"),
        &owner_session,
        "{}",
    )
    .await;
    assert_eq!(status, 200);
    assert!(store.invitation_name(&token, now).unwrap().is_none());
    let (status, _) = post(
        address,
        "/api/owner/invitations",
        &owner_session,
        "{\"name\":\" \"}",
    )
    .await;
    assert_eq!(status, 400);

    // Carol joins through another invitation and has two passkeys; the owner revokes one.
    store
        .create_invitation("carol-token", "Carol", now, now + 600)
        .unwrap();
    let (carol, carol_key) = person(2, "Carol", false, now);
    assert!(
        store
            .redeem_invitation("carol-token", &carol, &carol_key, now)
            .unwrap()
    );
    let (_, mut second_key) = person(3, "Carol", false, now);
    second_key.user_id = carol.id;
    store.add_passkey(&second_key).unwrap();
    let path = format!(
        "/api/owner/passkeys/{}/revoke",
        hex::encode(&second_key.credential_id)
    );
    let (status, _) = post(address, &path, &owner_session, "{}").await;
    assert_eq!(status, 200);
    assert_eq!(store.passkeys_of(&carol.id).unwrap().len(), 1);
    let (status, _) = post(address, &path, &owner_session, "{}").await;
    assert_eq!(status, 404);

    // The owner's last passkey stays, or nobody could ever manage the box again.
    let path = format!(
        "/api/owner/passkeys/{}/revoke",
        hex::encode(&owner_key.credential_id)
    );
    let (status, _) = post(address, &path, &owner_session, "{}").await;
    assert_eq!(status, 409);
    // The owner cannot be revoked as a user either.
    let (status, _) = post(
        address,
        &format!("/api/owner/users/{}/revoke", hex::encode(owner.id)),
        &owner_session,
        "{}",
    )
    .await;
    assert_eq!(status, 404);

    // Carol, signed in, is not the owner.
    let carol_session = "c".repeat(64);
    store
        .create_session(&carol_session, &carol.id, now, now + 600, now)
        .unwrap();
    let (status, _) = post(
        address,
        "/api/owner/invitations",
        &carol_session,
        "{\"name\":\"Eve\"}",
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = post(
        address,
        "/api/owner/invitations",
        "d".repeat(64).as_str(),
        "{\"name\":\"Eve\"}",
    )
    .await;
    assert_eq!(status, 401);
    server.stop().await;
}
