//! Looks up users and groups in /etc/passwd and /etc/group (no NSS: the image is static).
//!
//! Read-only parsing of the two files: it must never change an identity itself.

#![forbid(unsafe_code)]

use std::path::Path;

/// A user's ids and home, as a service runs with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// User name (for USER and LOGNAME), when known.
    pub name: Option<String>,
    /// Home folder (for HOME), when known.
    pub home: Option<String>,
}

/// Resolves `user` (name or number) and `group` (name or number; default: the user's primary
/// group) against the passwd and group files under `etc`.
pub fn resolve(
    etc: &Path,
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<Identity>, String> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string(etc.join("passwd")).unwrap_or_default();
    let mut identity = match user {
        Some(user) => find_user(&passwd, user).ok_or_else(|| format!("unknown user `{user}`"))?,
        None => Identity {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            name: None,
            home: None,
        },
    };
    if let Some(group) = group {
        let groups = std::fs::read_to_string(etc.join("group")).unwrap_or_default();
        identity.gid =
            find_group(&groups, group).ok_or_else(|| format!("unknown group `{group}`"))?;
    }
    Ok(Some(identity))
}

fn find_user(passwd: &str, user: &str) -> Option<Identity> {
    let by_number = user.parse::<u32>().ok();
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 {
            continue;
        }
        let (Ok(uid), Ok(gid)) = (fields[2].parse::<u32>(), fields[3].parse::<u32>()) else {
            continue;
        };
        if fields[0] == user || by_number == Some(uid) {
            return Some(Identity {
                uid,
                gid,
                name: Some(fields[0].to_owned()),
                home: Some(fields[5].to_owned()),
            });
        }
    }
    by_number.map(|uid| Identity {
        uid,
        gid: uid,
        name: None,
        home: None,
    })
}

fn find_group(groups: &str, group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Some(gid);
    }
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let gid = fields.nth(1)?.parse::<u32>().ok()?;
        (name == group).then_some(gid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_numbers_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbroken line\nmodel:x:900:901::/var/lib/model:/usr/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("group"), "root:x:0:\nllm:x:777:model\n").unwrap();
        let id = resolve(dir.path(), Some("model"), None).unwrap().unwrap();
        assert_eq!(
            (id.uid, id.gid, id.home.as_deref()),
            (900, 901, Some("/var/lib/model"))
        );
        let id = resolve(dir.path(), Some("model"), Some("llm"))
            .unwrap()
            .unwrap();
        assert_eq!((id.uid, id.gid), (900, 777));
        let id = resolve(dir.path(), Some("1234"), None).unwrap().unwrap();
        assert_eq!((id.uid, id.gid), (1234, 1234));
        assert!(resolve(dir.path(), Some("ghost"), None).is_err());
        assert!(resolve(dir.path(), Some("model"), Some("nogroup-here")).is_err());
        assert_eq!(resolve(dir.path(), None, None).unwrap(), None);
    }
}
