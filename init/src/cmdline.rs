//! The `cloister.*` options on the kernel command line.
//!
//! The command line is measured into RTMR2, so what it says is part of the box's identity.
//! Parsing never fails as a whole: a bad value is reported and that option keeps its
//! default, so a typo cannot stop the box from booting. This module never reads files.

use std::net::Ipv4Addr;

/// The hostname when the command line names none.
pub const DEFAULT_HOSTNAME: &str = "cloister";
/// The longest hostname Linux accepts (`__NEW_UTS_LEN`).
pub const HOSTNAME_MAX_BYTES: usize = 64;
/// The most DNS servers `cloister.dns=` may list (the resolver reads three).
pub const DNS_SERVERS_MAX: usize = 3;

/// A static IPv4 configuration from `cloister.ip=ADDR/PREFIX[,GATEWAY]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticIpv4 {
    /// The interface's address.
    pub address: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix_len: u8,
    /// The default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
}

/// How the first virtio NIC gets its address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// DHCPv4 (`cloister.ip=dhcp`, the default).
    #[default]
    Dhcp,
    /// A fixed address.
    Static(StaticIpv4),
    /// Only the loopback interface (`cloister.ip=off`).
    Off,
}

/// What init takes from the kernel command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootOptions {
    /// `cloister.hostname=NAME`.
    pub hostname: Option<String>,
    /// `cloister.ip=`.
    pub network: NetworkMode,
    /// `cloister.dns=ADDR[,ADDR...]`; replaces the servers DHCP offers.
    pub dns: Vec<Ipv4Addr>,
    /// `cloister.model=NAME:BYTES:ROOT`, once per model disk, in disk order: the N-th
    /// (from 0) is the disk whose virtio serial is `cloister-model-N`.
    pub models: Vec<ModelDiskSpec>,
}

/// One model disk as the command line (measured into RTMR2) describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDiskSpec {
    /// Its place among the `cloister.model=` options, from 0, bad ones counted.
    pub index: usize,
    /// The mapping's name: the model is served from `/dev/mapper/<name>`.
    pub name: String,
    /// The model file's size in bytes.
    pub data_bytes: u64,
    /// The dm-verity root hash (SHA-256).
    pub root: [u8; 32],
}

impl ModelDiskSpec {
    /// The virtio serial of its disk (QEMU's `-device virtio-blk-pci,serial=`).
    pub fn serial(&self) -> String {
        format!("cloister-model-{}", self.index)
    }
}

/// The most model disks the command line may list.
pub const MODEL_DISKS_MAX: usize = 16;

fn parse_model(value: &str) -> Result<ModelDiskSpec, &'static str> {
    let mut parts = value.split(':');
    let (Some(name), Some(bytes), Some(root), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("expected NAME:BYTES:ROOT");
    };
    if !crate::dm::is_valid_name(name) || name == "control" {
        return Err("a name of 1-127 letters, digits, . _ -");
    }
    let data_bytes: u64 = bytes.parse().map_err(|_| "bad size")?;
    if data_bytes == 0 || data_bytes > (1 << 50) {
        return Err("size out of range");
    }
    if root.len() != 64 {
        return Err("the root is 64 hex digits");
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(&root[2 * i..2 * i + 2], 16).map_err(|_| "bad hex in the root")?;
    }
    Ok(ModelDiskSpec {
        index: 0,
        name: name.to_owned(),
        data_bytes,
        root: out,
    })
}

impl BootOptions {
    /// The hostname to set.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME)
    }
}

/// A `cloister.*` option whose value init cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("kernel command line: {key}={value:?}: {reason}; using the default")]
pub struct CmdlineError {
    /// The option's name.
    pub key: String,
    /// The value given.
    pub value: String,
    /// Why it was refused.
    pub reason: &'static str,
}

/// Splits a command line into words, honouring double quotes as the kernel does.
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                started = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if started {
                    out.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(current);
    }
    out
}

/// Whether `name` is a valid hostname: dot-separated labels of letters, digits and
/// hyphens, no label starting or ending with a hyphen.
pub fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= HOSTNAME_MAX_BYTES
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn parse_static(value: &str) -> Result<StaticIpv4, &'static str> {
    let (cidr, gateway) = match value.split_once(',') {
        Some((cidr, gateway)) => (cidr, Some(gateway)),
        None => (value, None),
    };
    let (address, prefix) = cidr
        .split_once('/')
        .ok_or("expected ADDR/PREFIX[,GATEWAY]")?;
    let address: Ipv4Addr = address.parse().map_err(|_| "bad IPv4 address")?;
    let prefix_len: u8 = prefix.parse().map_err(|_| "bad prefix length")?;
    if prefix_len > 32 {
        return Err("prefix length over 32");
    }
    if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
        return Err("not a unicast address");
    }
    let gateway = match gateway {
        Some(g) => Some(g.parse::<Ipv4Addr>().map_err(|_| "bad gateway address")?),
        None => None,
    };
    Ok(StaticIpv4 {
        address,
        prefix_len,
        gateway,
    })
}

fn parse_dns(value: &str) -> Result<Vec<Ipv4Addr>, &'static str> {
    let servers = value
        .split(',')
        .map(|s| s.parse::<Ipv4Addr>().map_err(|_| "bad IPv4 address"))
        .collect::<Result<Vec<_>, _>>()?;
    if servers.len() > DNS_SERVERS_MAX {
        return Err("more than three servers");
    }
    Ok(servers)
}

/// Parses the `cloister.*` options of a kernel command line. Unknown options are ignored;
/// a bad value keeps the default and is returned as an error. The last occurrence wins.
pub fn parse_cmdline(cmdline: &str) -> (BootOptions, Vec<CmdlineError>) {
    let mut options = BootOptions::default();
    let mut errors = Vec::new();
    let mut model_count = 0usize;
    for word in words(cmdline) {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let refuse = |reason| CmdlineError {
            key: key.to_owned(),
            value: value.to_owned(),
            reason,
        };
        match key {
            "cloister.hostname" => {
                if is_valid_hostname(value) {
                    options.hostname = Some(value.to_owned());
                } else {
                    errors.push(refuse("not a valid hostname"));
                }
            }
            "cloister.ip" => match value {
                "dhcp" => options.network = NetworkMode::Dhcp,
                "off" => options.network = NetworkMode::Off,
                _ => match parse_static(value) {
                    Ok(config) => options.network = NetworkMode::Static(config),
                    Err(reason) => errors.push(refuse(reason)),
                },
            },
            "cloister.dns" => match parse_dns(value) {
                Ok(servers) => options.dns = servers,
                Err(reason) => errors.push(refuse(reason)),
            },
            // Repeatable: each occurrence adds a disk. A bad one is reported and skipped,
            // and later disks keep their place (their serial counts every occurrence).
            "cloister.model" => {
                let index = model_count;
                model_count += 1;
                match parse_model(value) {
                    _ if index >= MODEL_DISKS_MAX => {
                        errors.push(refuse("more than 16 model disks"))
                    }
                    Ok(model) if options.models.iter().any(|m| m.name == model.name) => {
                        errors.push(refuse("a second model of that name"))
                    }
                    Ok(model) => options.models.push(ModelDiskSpec { index, ..model }),
                    Err(reason) => errors.push(refuse(reason)),
                }
            }
            _ => {}
        }
    }
    (options, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_options() {
        let (options, errors) =
            parse_cmdline("console=ttyS0 quiet initrd=initrd BOOT_IMAGE=/vmlinuz\n");
        assert!(errors.is_empty());
        assert_eq!(options, BootOptions::default());
        assert_eq!(options.hostname(), DEFAULT_HOSTNAME);
        assert_eq!(options.network, NetworkMode::Dhcp);
    }

    #[test]
    fn static_address_with_gateway_hostname_and_dns() {
        let (options, errors) = parse_cmdline(
            "console=ttyS0 cloister.ip=10.0.2.15/24,10.0.2.2 cloister.hostname=chat-box \
             cloister.dns=1.1.1.1,9.9.9.9",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            options.network,
            NetworkMode::Static(StaticIpv4 {
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            })
        );
        assert_eq!(options.hostname(), "chat-box");
        assert_eq!(
            options.dns,
            [Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(9, 9, 9, 9)]
        );
    }

    #[test]
    fn static_address_without_gateway_and_off() {
        let (options, _) = parse_cmdline("cloister.ip=192.168.7.2/32");
        assert_eq!(
            options.network,
            NetworkMode::Static(StaticIpv4 {
                address: Ipv4Addr::new(192, 168, 7, 2),
                prefix_len: 32,
                gateway: None
            })
        );
        let (options, _) = parse_cmdline("cloister.ip=192.168.7.2/32 cloister.ip=off");
        assert_eq!(options.network, NetworkMode::Off);
    }

    #[test]
    fn bad_values_keep_defaults_and_are_reported() {
        let (options, errors) = parse_cmdline(
            "cloister.ip=10.0.2.15/33 cloister.hostname=-bad- cloister.dns=1.1.1.1,x \
             cloister.ip=10.0.2.15 cloister.ip=0.0.0.0/8 cloister.ip=10.0.0.1/8,gw",
        );
        assert_eq!(options, BootOptions::default());
        let reasons: Vec<_> = errors.iter().map(|e| e.reason).collect();
        assert_eq!(
            reasons,
            [
                "prefix length over 32",
                "not a valid hostname",
                "bad IPv4 address",
                "expected ADDR/PREFIX[,GATEWAY]",
                "not a unicast address",
                "bad gateway address",
            ]
        );
        assert!(errors[0].to_string().contains("cloister.ip"));
    }

    #[test]
    fn quoted_words_are_one_word() {
        let (options, errors) =
            parse_cmdline("dyndbg=\"file x +p\" cloister.hostname=\"box1\" cloister.ip=off");
        assert!(errors.is_empty());
        assert_eq!(options.hostname(), "box1");
        assert_eq!(options.network, NetworkMode::Off);
        assert_eq!(words("a=\"b c\" d"), ["a=b c", "d"]);
    }

    #[test]
    fn hostname_rules() {
        assert!(is_valid_hostname("cloister"));
        assert!(is_valid_hostname("box-1.example.org"));
        assert!(!is_valid_hostname(""));
        assert!(!is_valid_hostname("a..b"));
        assert!(!is_valid_hostname("under_score"));
        assert!(!is_valid_hostname(&"a".repeat(65)));
        assert!(is_valid_hostname(&"a".repeat(63)));
    }

    #[test]
    fn model_disks_are_listed_in_order_and_bad_ones_keep_their_place() {
        let root = "ab".repeat(32);
        let (options, errors) = parse_cmdline(&format!(
            "cloister.model=smol:1000:{root} cloister.model=bad:0:{root} \
             cloister.model=two.Q4_1:5:{} cloister.model=smol:9:{root} cloister.model=x:1:zz",
            "01".repeat(32)
        ));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(options.models.len(), 2);
        assert_eq!(options.models[0].name, "smol");
        assert_eq!(options.models[0].data_bytes, 1000);
        assert_eq!(options.models[0].root, [0xab; 32]);
        assert_eq!(options.models[0].serial(), "cloister-model-0");
        assert_eq!(options.models[1].name, "two.Q4_1");
        assert_eq!(options.models[1].serial(), "cloister-model-2");
        for bad in [
            "a:1",
            "a/b:1:{root}",
            "control:1:{root}",
            "a:x:{root}",
            "a:1:abc",
        ] {
            let (options, errors) =
                parse_cmdline(&format!("cloister.model={}", bad.replace("{root}", &root)));
            assert!(options.models.is_empty(), "{bad}");
            assert_eq!(errors.len(), 1, "{bad}");
        }
    }
}
