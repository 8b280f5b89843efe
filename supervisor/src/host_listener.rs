//! The box's end of the host channel: an AF_VSOCK listener on
//! [`HOST_CHANNEL_VSOCK_PORT`](crate::host_channel::HOST_CHANNEL_VSOCK_PORT), served on plain
//! threads (one per connection, at most
//! [`HOST_CONNECTIONS_MAX`](crate::host_channel::HOST_CONNECTIONS_MAX)), each with a read
//! time-out. It parses nothing itself ([`crate::host_channel`] does) and decides nothing: the
//! event loop answers through the function it is given.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use vsock::{VMADDR_CID_ANY, VsockListener, VsockStream};

use crate::host_channel::{
    HOST_CONNECTION_IDLE_MS, HOST_CONNECTIONS_MAX, HostRequest, HostResponse, serve_host_connection,
};

/// Where the host channel listens and what it reads for `measurements`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostChannelConfig {
    /// The vsock port.
    pub port: u32,
    /// The expected-measurements file the host passed in (fw_cfg), if any.
    pub expected_measurements: Option<PathBuf>,
}

/// Answers one request (called on a connection's thread).
pub(crate) type Answer = Arc<dyn Fn(HostRequest) -> HostResponse + Send + Sync>;

/// Binds the listener and starts the accepting thread.
pub(crate) fn start(port: u32, answer: Answer) -> std::io::Result<()> {
    let listener = VsockListener::bind_with_cid_port(VMADDR_CID_ANY, port)?;
    std::thread::Builder::new()
        .name("host-channel".into())
        .spawn(move || accept_loop(listener, answer))?;
    Ok(())
}

fn accept_loop(listener: VsockListener, answer: Answer) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::warn!("host channel: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if open.fetch_add(1, Ordering::SeqCst) >= HOST_CONNECTIONS_MAX {
            open.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("host channel: too many connections, one refused");
            continue;
        }
        let (done, answer) = (open.clone(), answer.clone());
        let spawned = std::thread::Builder::new()
            .name("host-channel-conn".into())
            .spawn(move || {
                serve(stream, &answer);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            open.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("host channel: cannot start a connection thread: {e}");
        }
    }
}

fn serve(stream: VsockStream, answer: &Answer) {
    let idle = Some(Duration::from_millis(HOST_CONNECTION_IDLE_MS));
    if stream.set_read_timeout(idle).is_err() || stream.set_write_timeout(idle).is_err() {
        return;
    }
    serve_host_connection(stream, |request| answer(request));
}
