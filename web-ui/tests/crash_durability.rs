//! Durability: a writer process is killed with SIGKILL at random moments, many times; every
//! write it acknowledged (printed after the store returned) must be in the database after
//! each kill, and SQLite's integrity check must pass.
//!
//! The writer is this same test binary, re-run with `CLOISTER_CRASH_WRITER_DIR` set, so it
//! runs the real `Store` with its real settings (WAL, synchronous=FULL).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloister_web_ui::store::{Store, StoredPasskey, User};

const ROUNDS: u32 = 40;
const TEST_NAME: &str = "acknowledged_writes_survive_sigkill_at_random_moments";

fn writer(dir: &str, round: u32) {
    let store = Store::open(std::path::Path::new(dir)).unwrap();
    for i in 0u32.. {
        let body = format!("r{round}-n{i}");
        let id = store.append_note(&body).unwrap();
        println!("ack note {id} {body}");
        if i % 3 == 0 {
            // A multi-statement transaction: invitation redeemed into user + passkey.
            let token = format!("tok-{round}-{i}");
            store
                .create_invitation(&token, "crash", 1, i64::MAX)
                .unwrap();
            let mut id_bytes = [0u8; 16];
            id_bytes[..4].copy_from_slice(&round.to_be_bytes());
            id_bytes[4..8].copy_from_slice(&i.to_be_bytes());
            let user = User {
                id: id_bytes,
                name: "crash".into(),
                is_owner: false,
                created_at_s: 1,
                revoked: false,
            };
            let passkey = StoredPasskey {
                credential_id: id_bytes.to_vec(),
                user_id: id_bytes,
                passkey_json: "{}".into(),
                label: "k".into(),
                created_at_s: 1,
                last_used_at_s: 0,
            };
            assert!(store.redeem_invitation(&token, &user, &passkey, 2).unwrap());
            println!("ack user {}", hex::encode(id_bytes));
        }
    }
}

/// xorshift, seeded from the clock: random moments without a dependency.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn acknowledged_writes_survive_sigkill_at_random_moments() {
    if let Ok(dir) = std::env::var("CLOISTER_CRASH_WRITER_DIR") {
        let round = std::env::var("CLOISTER_CRASH_ROUND")
            .unwrap()
            .parse()
            .unwrap();
        writer(&dir, round);
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("state");
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut acked_notes: BTreeSet<(i64, String)> = BTreeSet::new();
    let mut acked_users: BTreeSet<String> = BTreeSet::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env("CLOISTER_CRASH_WRITER_DIR", &dir)
            .env("CLOISTER_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter(|line| line.starts_with("ack "))
                .collect::<Vec<_>>()
        });
        // Kill somewhere between start-up and a good number of writes.
        let delay = Duration::from_millis(20 + next_random(&mut seed) % 400);
        let started = Instant::now();
        std::thread::sleep(delay);
        // SAFETY: kill(2) on the child we spawned and have not reaped; no memory involved.
        let killed = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(killed, 0);
        let status = child.wait().unwrap();
        assert!(!status.success(), "the writer was killed, not finished");
        for line in reader.join().unwrap() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["ack", "note", id, body] => {
                    acked_notes.insert((id.parse().unwrap(), (*body).to_owned()));
                }
                ["ack", "user", id] => {
                    acked_users.insert((*id).to_owned());
                }
                _ => {}
            }
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.integrity_check().unwrap(), "ok");
        let notes: BTreeSet<(i64, String)> = store.notes().unwrap().into_iter().collect();
        let lost: Vec<_> = acked_notes.difference(&notes).collect();
        assert!(
            lost.is_empty(),
            "round {round} (after {started:?}): lost {lost:?}"
        );
        let users: BTreeSet<String> = store
            .users()
            .unwrap()
            .iter()
            .map(|u| hex::encode(u.id))
            .collect();
        let lost_users: Vec<_> = acked_users.difference(&users).collect();
        assert!(
            lost_users.is_empty(),
            "round {round}: lost users {lost_users:?}"
        );
        // Every user came with its passkey: the transaction is all or nothing.
        for user in store.users().unwrap() {
            assert_eq!(store.passkeys_of(&user.id).unwrap().len(), 1);
        }
    }
    assert!(
        acked_notes.len() > ROUNDS as usize,
        "the writer wrote too little to test anything"
    );
    eprintln!(
        "{} notes and {} users acknowledged, none lost",
        acked_notes.len(),
        acked_users.len()
    );
}
