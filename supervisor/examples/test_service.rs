//! A service for the supervisor's tests and benchmark, scripted by its arguments, that speaks
//! sd_notify only through the `sd-notify` crate, as real services do.
//!
//! Steps run in order: `ready`, `status TEXT`, `stopping`, `reloading`, `extend USEC`,
//! `errno N`, `sleep MS`, `exit CODE`,
//! `raise SIGNAL` (e.g. SEGV), `ignore SIGNAL`, `ping N` (N watchdog pings at a quarter of
//! WATCHDOG_USEC), `spoof-ready SOCKET` (send READY=1 to another service's socket),
//! `raw TEXT` and `raw-big BYTES` (send raw bytes to $NOTIFY_SOCKET), `print TEXT`. After the last step it sleeps until killed.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use sd_notify::NotifyState;

fn signal_number(name: &str) -> i32 {
    match name.trim_start_matches("SIG") {
        "SEGV" => libc::SIGSEGV,
        "TERM" => libc::SIGTERM,
        "KILL" => libc::SIGKILL,
        "ABRT" => libc::SIGABRT,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        other => panic!("test_service: unknown signal {other}"),
    }
}

fn notify(state: &[NotifyState]) {
    sd_notify::notify(false, state).expect("test_service: sd_notify failed");
}

/// Sends bytes to $NOTIFY_SOCKET without the crate (which knows no abstract sockets), as
/// libsystemd does: a leading `@` names an abstract socket.
fn send_raw(bytes: &[u8]) {
    use std::os::linux::net::SocketAddrExt;
    let target = std::env::var("NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
    let socket = UnixDatagram::unbound().unwrap();
    let addr = match target.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap(),
        None => std::os::unix::net::SocketAddr::from_pathname(&target).unwrap(),
    };
    socket.send_to_addr(bytes, &addr).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut steps = args.iter();
    while let Some(step) = steps.next() {
        let mut value = || {
            steps
                .next()
                .expect("test_service: step needs a value")
                .as_str()
        };
        match step.as_str() {
            "ready" => notify(&[NotifyState::Ready]),
            "stopping" => notify(&[NotifyState::Stopping]),
            "reloading" => notify(&[
                NotifyState::Reloading,
                NotifyState::monotonic_usec_now().unwrap(),
            ]),
            "extend" => notify(&[NotifyState::ExtendTimeoutUsec(value().parse().unwrap())]),
            "errno" => notify(&[NotifyState::Errno(value().parse().unwrap())]),
            "status" => notify(&[NotifyState::Status(value())]),
            "sleep" => std::thread::sleep(Duration::from_millis(value().parse().unwrap())),
            "exit" => std::process::exit(value().parse().unwrap()),
            "raise" => {
                let signal = signal_number(value());
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: setrlimit reads a valid rlimit; restoring the default action (std
                // handles SIGSEGV for stack overflows) and raise touch no memory of ours.
                unsafe {
                    libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                    libc::signal(signal, libc::SIG_DFL);
                    libc::raise(signal);
                }
            }
            "ignore" => {
                let signal = signal_number(value());
                // SAFETY: installing SIG_IGN touches no memory of ours.
                unsafe {
                    libc::signal(signal, libc::SIG_IGN);
                }
            }
            "ping" => {
                let count: u32 = value().parse().unwrap();
                let mut usec = 0;
                assert!(
                    sd_notify::watchdog_enabled(false, &mut usec),
                    "no WATCHDOG_USEC"
                );
                for _ in 0..count {
                    notify(&[NotifyState::Watchdog]);
                    std::thread::sleep(Duration::from_micros(usec / 4));
                }
            }
            "spoof-ready" => {
                let socket = UnixDatagram::unbound().unwrap();
                socket.send_to(b"READY=1", value()).unwrap();
            }
            "raw" => send_raw(value().as_bytes()),
            "raw-big" => send_raw(&vec![b'X'; value().parse().unwrap()]),
            "print" => println!("{}", value()),
            other => panic!("test_service: unknown step {other}"),
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
