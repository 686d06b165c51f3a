//! `--user USER[:GROUP]`: bind as root, then run as USER.
//!
//! graceexec drops its own credentials once the sockets are bound, so that
//! every generation it starts afterwards runs as USER without any
//! per-child step. Nothing privileged is kept: the listening sockets stay
//! open across the drop, which is all the server needs from root.

use std::ffi::{CString, OsString};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use nix::unistd::{self, Gid, Group, Uid, User};

#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
    /// None when the passwd entry has no shell.
    pub shell: Option<PathBuf>,
    pub group_name: String,
}

/// A uid or gid written as digits only (`"+5".parse::<u32>()` is Ok).
fn number(s: &str) -> Option<u32> {
    s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse().ok()).flatten()
}

fn db_error(e: nix::Error) -> String {
    format!("cannot read the user and group databases: {e}")
}

/// Parse and resolve `USER`, `USER:GROUP`, `UID` or `UID:GID` through the
/// passwd and group databases. Without GROUP, the user's primary group.
/// Usable as a clap value_parser.
pub fn parse(spec: &str) -> Result<Identity, String> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if u.is_empty() {
        return Err(format!("no user in '{spec}'; use USER or USER:GROUP"));
    }
    if g.is_some_and(|g| g.is_empty() || g.contains(':')) {
        return Err(format!("'{spec}' is not USER or USER:GROUP"));
    }
    let user = match number(u) {
        Some(n) => User::from_uid(Uid::from_raw(n)),
        None => User::from_name(u),
    }
    .map_err(db_error)?
    .ok_or_else(|| format!("no such user '{u}'"))?;
    let group = match g {
        Some(g) => match number(g) {
            Some(n) => Group::from_gid(Gid::from_raw(n)),
            None => Group::from_name(g),
        }
        .map_err(db_error)?
        .ok_or_else(|| format!("no such group '{g}'"))?,
        // A primary group without a group entry is legal: keep its number.
        None => Group::from_gid(user.gid).map_err(db_error)?.unwrap_or(Group {
            name: user.gid.to_string(),
            passwd: CString::default(),
            gid: user.gid,
            mem: Vec::new(),
        }),
    };
    let shell = Some(user.shell).filter(|s| !s.as_os_str().is_empty());
    Ok(Identity {
        name: user.name,
        uid: user.uid,
        gid: group.gid,
        home: user.dir,
        shell,
        group_name: group.name,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Running as root: change credentials.
    Drop,
    /// Already running as USER and GROUP: nothing to do.
    AlreadyThere,
}

/// What `drop_to` must do, from the current real and effective ids.
fn plan(ruid: Uid, euid: Uid, rgid: Gid, egid: Gid, id: &Identity) -> Result<Plan, String> {
    if euid.is_root() {
        Ok(Plan::Drop)
    } else if ruid == id.uid && euid == id.uid && rgid == id.gid && egid == id.gid {
        Ok(Plan::AlreadyThere)
    } else {
        Err(format!("--user needs graceexec to start as root (it runs as uid {euid})"))
    }
}

/// Drop graceexec itself to `id`, for good.
pub fn drop_to(id: &Identity) -> Result<()> {
    let ids = (unistd::getuid(), unistd::geteuid(), unistd::getgid(), unistd::getegid());
    if plan(ids.0, ids.1, ids.2, ids.3, id).map_err(anyhow::Error::msg)? == Plan::AlreadyThere {
        return Ok(());
    }
    let name = &id.name;
    let cname = CString::new(name.as_str()).context("--user: the user name contains a NUL")?;
    // The order matters. initgroups first: root's supplementary groups
    // (group 0 among them) would otherwise survive the drop, and setting
    // them needs CAP_SETGID. Then setgid, which also needs a privilege that
    // setuid gives up. setuid last: run by root it sets the real, effective
    // and saved uid alike (setuid(2)), which leaves no way back.
    unistd::initgroups(&cname, id.gid)
        .with_context(|| format!("--user: cannot set the groups of {name}"))?;
    unistd::setgid(id.gid).with_context(|| format!("--user: cannot set group id {}", id.gid))?;
    unistd::setuid(id.uid).with_context(|| format!("--user: cannot set user id {}", id.uid))?;
    // Belt and braces: a saved uid of 0 left behind (or a capability) would
    // let a compromised graceexec become root again.
    if !id.uid.is_root()
        && (unistd::setuid(Uid::from_raw(0)).is_ok() || unistd::seteuid(Uid::from_raw(0)).is_ok())
    {
        bail!("--user: graceexec could still become root after switching to {name}; stopping");
    }
    if unistd::getgid() != id.gid || unistd::getegid() != id.gid {
        bail!("--user: the group id did not change to {}; refusing to go on", id.gid);
    }
    Ok(())
}

/// What a login sets for USER: USER, LOGNAME, HOME, and SHELL if known.
/// They replace any inherited values in the children's environment.
pub fn env(id: &Identity) -> Vec<(OsString, OsString)> {
    let mut env = vec![
        ("USER".into(), id.name.clone().into()),
        ("LOGNAME".into(), id.name.clone().into()),
        ("HOME".into(), id.home.clone().into_os_string()),
    ];
    if let Some(shell) = &id.shell {
        env.push(("SHELL".into(), shell.clone().into_os_string()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_and_numbers() {
        for spec in ["root", "0", "root:root", "0:0", "root:0"] {
            let id = parse(spec).unwrap();
            assert_eq!((id.name.as_str(), id.uid.as_raw(), id.gid.as_raw()), ("root", 0, 0));
            assert_eq!(id.group_name, "root");
        }
        if let Ok(Some(nobody)) = User::from_name("nobody") {
            let id = parse("nobody").unwrap();
            assert_eq!((id.uid, id.gid), (nobody.uid, nobody.gid), "primary group");
            assert_eq!(parse("nobody:root").unwrap().gid.as_raw(), 0);
        }
        let env = env(&parse("root").unwrap());
        assert!(env.contains(&("HOME".into(), "/root".into())), "{env:?}");
        assert!(env.contains(&("LOGNAME".into(), "root".into())), "{env:?}");
    }

    #[test]
    fn rejects_unknown_names_and_bad_specs() {
        assert_eq!(parse("no-such-user-ge").unwrap_err(), "no such user 'no-such-user-ge'");
        assert_eq!(parse("root:no-such-group").unwrap_err(), "no such group 'no-such-group'");
        assert_eq!(parse("4000000000").unwrap_err(), "no such user '4000000000'");
        for bad in ["", ":root", "root:", "a:b:c", "root::"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("a:b:c").unwrap_err().contains("USER:GROUP"));
    }

    #[test]
    fn drops_only_from_root() {
        let id = Identity {
            name: "app".into(),
            uid: Uid::from_raw(1000),
            gid: Gid::from_raw(1000),
            home: "/home/app".into(),
            shell: None,
            group_name: "app".into(),
        };
        let (u, g) = (Uid::from_raw, Gid::from_raw);
        assert_eq!(plan(u(1000), u(0), g(1000), g(1000), &id), Ok(Plan::Drop));
        assert_eq!(plan(u(0), u(0), g(0), g(0), &id), Ok(Plan::Drop));
        assert_eq!(plan(u(1000), u(1000), g(1000), g(1000), &id), Ok(Plan::AlreadyThere));
        assert_eq!(
            plan(u(1001), u(1001), g(1000), g(1000), &id),
            Err("--user needs graceexec to start as root (it runs as uid 1001)".into())
        );
        assert!(plan(u(1000), u(1000), g(1000), g(50), &id).is_err(), "group differs");
    }
}
