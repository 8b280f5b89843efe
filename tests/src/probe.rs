//! What the test-only guest service `cloister-probe` observes inside a booted image, and
//! how it reports it: mounts, `/dev/vsock`, its IPv4 address, loaded modules, uptime, as
//! one JSON object. Read-only observation; the one action is asking the supervisor to
//! power off. It is never part of a production image.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The supervisor's control socket inside the image.
pub const SUPERVISOR_SOCKET: &str = "/run/cloister/supervisor.sock";

/// What the probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// `(file system type, mount point)` from `/proc/self/mounts`.
    pub mounts: Vec<(String, String)>,
    /// Whether `/dev/vsock` exists.
    pub vsock: bool,
    /// The address the guest uses to reach its default gateway.
    pub ipv4: Option<Ipv4Addr>,
    /// The default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Loaded module names from `/proc/modules`.
    pub modules: Vec<String>,
    /// Seconds since boot from `/proc/uptime`, in milliseconds.
    pub uptime_ms: u64,
}

/// Parses `/proc/self/mounts` into `(fstype, mount point)`.
pub fn parse_mounts(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (_, point, fstype) = (w.next()?, w.next()?, w.next()?);
            Some((fstype.to_string(), point.to_string()))
        })
        .collect()
}

/// The default gateway from `/proc/net/route` (hex, little-endian).
pub fn parse_default_gateway(text: &str) -> Option<Ipv4Addr> {
    text.lines().skip(1).find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.get(1) == Some(&"00000000") {
            let g = u32::from_str_radix(w.get(2)?, 16).ok()?;
            Some(Ipv4Addr::from(g.to_le_bytes()))
        } else {
            None
        }
    })
}

/// Module names, the first word of each line of `/proc/modules`.
pub fn parse_modules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Observes the running system through `/proc` and `/dev`.
pub fn observe() -> Observation {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let gateway = parse_default_gateway(&read("/proc/net/route"));
    let ipv4 = gateway.and_then(|g| {
        // Connecting a UDP socket sends nothing; it only picks the source address.
        let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect((g, 9)).ok()?;
        match socket.local_addr().ok()?.ip() {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        }
    });
    let uptime_s: f64 = read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    Observation {
        mounts: parse_mounts(&read("/proc/self/mounts")),
        vsock: Path::new("/dev/vsock").exists(),
        ipv4,
        gateway,
        modules: parse_modules(&read("/proc/modules")),
        uptime_ms: (uptime_s * 1000.0) as u64,
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Observation {
    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        let mounts: Vec<String> = self
            .mounts
            .iter()
            .map(|(t, p)| {
                format!(
                    "{{\"type\":{},\"point\":{}}}",
                    json_string(t),
                    json_string(p)
                )
            })
            .collect();
        let modules: Vec<String> = self.modules.iter().map(|m| json_string(m)).collect();
        let addr =
            |a: Option<Ipv4Addr>| a.map_or("null".to_string(), |a| json_string(&a.to_string()));
        format!(
            "{{\"mounts\":[{}],\"vsock\":{},\"ipv4\":{},\"gateway\":{},\"modules\":[{}],\"uptime_ms\":{}}}",
            mounts.join(","),
            self.vsock,
            addr(self.ipv4),
            addr(self.gateway),
            modules.join(","),
            self.uptime_ms
        )
    }
}

/// Asks the supervisor at `socket` to power off; returns its one-line answer.
pub fn request_poweroff(socket: &Path) -> io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"{\"cmd\":\"poweroff\"}\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_routes_and_modules_parse() {
        let mounts =
            parse_mounts("proc /proc proc rw 0 0\nconfigfs /sys/kernel/config configfs rw 0 0\n");
        assert_eq!(mounts[1], ("configfs".into(), "/sys/kernel/config".into()));
        let route = "Iface\tDestination\tGateway \tFlags\n\
            eth0\t0002000A\t00000000\t0001\n\
            eth0\t00000000\t0202000A\t0003\n";
        assert_eq!(
            parse_default_gateway(route),
            Some(Ipv4Addr::new(10, 0, 2, 2))
        );
        assert_eq!(parse_default_gateway("Iface\tDestination\n"), None);
        let modules = parse_modules(
            "vsock 61440 1 vmw_vsock_virtio_transport, Live 0x0\nvirtio_net 77824 0 - Live 0x0\n",
        );
        assert_eq!(modules, ["vsock", "virtio_net"]);
    }

    #[test]
    fn the_report_is_json_with_escapes() {
        let o = Observation {
            mounts: vec![("tmpfs".into(), "/run/a \"b\"".into())],
            vsock: true,
            ipv4: Some(Ipv4Addr::new(10, 0, 2, 15)),
            gateway: None,
            modules: vec!["vsock".into()],
            uptime_ms: 12,
        };
        assert_eq!(
            o.to_json(),
            r#"{"mounts":[{"type":"tmpfs","point":"/run/a \"b\""}],"vsock":true,"ipv4":"10.0.2.15","gateway":null,"modules":["vsock"],"uptime_ms":12}"#
        );
    }

    #[test]
    fn poweroff_speaks_one_json_line_to_the_socket() {
        let dir = std::env::temp_dir().join(format!("probe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut line).unwrap();
            (&stream).write_all(b"{\"ok\":true}\n").unwrap();
            line
        });
        assert_eq!(request_poweroff(&path).unwrap(), "{\"ok\":true}");
        assert_eq!(server.join().unwrap(), "{\"cmd\":\"poweroff\"}\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
