//! The new image's side of `graceexec upgrade`: the dry run, and taking
//! everything back.
//!
//! Every fd the document names is checked (open, and a socket or pipe as
//! it says) before any is taken: until then nothing has changed, and an
//! image that cannot take over goes back to the previous binary, which
//! takes over in its place and tells the client why.

use std::ffi::OsString;
use std::io::Read;
use std::time::Instant;

use nix::libc::{S_IFIFO, S_IFREG, S_IFSOCK};

use super::doc::{self, Doc, LoopOut};
use super::{own_env, Runtime};
use crate::carry;
use crate::control::protocol::{Answer, Reply};
use crate::control::server::Server;
use crate::event_loop::{events::Events, GenIo};
use crate::notify::{NotifyDir, NotifySocket, SdNotify};
use crate::outbox::{self, Stream};
use crate::output::Captured;
use crate::pidfile::PidFile;
use crate::sockets::Sockets;
use crate::startup::Started;
use crate::supervisor::Supervisor;
use crate::watch::Watch;
use crate::watchdog::Watchdog;
use crate::{log, signals};

/// `graceexec __upgrade-check`: read the document at fd 3 and say whether
/// this build can take it over.
pub fn check_main() -> i32 {
    let mut bytes = Vec::new();
    let read = carry::take(3, S_IFREG, "the upgrade document")
        .and_then(|fd| Ok(std::fs::File::from(fd).read_to_end(&mut bytes)?));
    let parsed = read.map_err(|e| format!("{e:#}")).and_then(|_| doc::parse(&bytes));
    match parsed {
        Ok(d) => {
            println!("{}", doc::ok_line(env!("CARGO_PKG_VERSION"), d.token));
            0
        }
        Err(why) => {
            println!("{why}");
            1
        }
    }
}

/// Every fd of the document, with the kind it must be.
fn fds(d: &Doc) -> Vec<(i32, u32)> {
    let rt = &d.rt;
    let mut out = Server::carried_fds(&rt.control);
    out.extend(Sockets::carried_fds(&rt.sockets).into_iter().map(|n| (n, S_IFSOCK)));
    out.extend(rt.gens.iter().map(|g| (g.notify.0, S_IFSOCK)));
    for (_, c) in &rt.outputs {
        out.extend(Captured::carried_fds(c).into_iter().map(|n| (n, S_IFIFO)));
    }
    out.extend(rt.watchdog.as_ref().map(|w| (Watchdog::carried_fd(w), S_IFIFO)));
    out.extend(d.previous.map(|n| (n, S_IFREG)));
    out
}

/// Whether this image can take `d` over, before anything is taken.
fn check(d: &Doc) -> Result<(), String> {
    if d.pid != std::process::id() {
        return Err(format!("{} names pid {}, not this process: unset it", doc::RESUME_FD, d.pid));
    }
    // For the test of the way back: a debug build refuses to take over
    // when it runs from the path this names.
    #[cfg(debug_assertions)]
    if std::env::var_os("GRACEEXEC_TEST_REFUSE_RESUME")
        .is_some_and(|p| std::fs::read_link("/proc/self/exe").is_ok_and(|e| e == p))
    {
        return Err("refused by GRACEEXEC_TEST_REFUSE_RESUME".into());
    }
    for (n, kind) in fds(d) {
        if !carry::is_kind(n, kind) {
            return Err(format!("fd {n} is not what the upgrade document says"));
        }
    }
    if d.rt.watch.as_ref().is_some_and(|w| !Watch::carried_ok(w)) {
        return Err("the --watch inotify fd is not what the upgrade document says".into());
    }
    Ok(())
}

/// The new image, started with `GRACEEXEC_RESUME_FD=value`: take over and
/// run the loop; the exit code.
pub fn resume(value: OsString) -> i32 {
    outbox::init(true);
    let failed = std::env::var(doc::FAILED).ok();
    std::env::remove_var(doc::RESUME_FD);
    std::env::remove_var(doc::FAILED);
    let read = || -> Result<(i32, Doc), String> {
        let n: i32 = value
            .to_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{} is not an fd number", doc::RESUME_FD))?;
        if !carry::is_kind(n, S_IFREG) {
            return Err(format!("{}={n} is not an open upgrade document", doc::RESUME_FD));
        }
        let bytes = carry::read_all(n).map_err(|e| format!("{e:#}"))?;
        Ok((n, doc::parse(&bytes)?))
    };
    let (memfd, d) = match read() {
        Ok(x) => x,
        Err(why) => {
            log::error(&format!("cannot resume after an upgrade: {why}"));
            return crate::startup::EXIT_STARTUP;
        }
    };
    // Everything that can fail short of taking the fds fails here, where
    // going back is still possible.
    let ready = check(&d)
        .and_then(|()| signals::signalfd().map_err(|e| format!("cannot create a signalfd: {e}")));
    let signals = match ready {
        Ok(s) => s,
        Err(why) => {
            match (d.previous, &failed) {
                (Some(prev), None) => go_back(prev, memfd, &why),
                _ => log::error(&format!("cannot resume after an upgrade: {why}")),
            }
            return crate::startup::EXIT_STARTUP;
        }
    };
    // The document is read: its memfd goes.
    drop(carry::take(memfd, S_IFREG, "the upgrade document"));
    if let Some(prev) = d.previous {
        drop(carry::take(prev, S_IFREG, "the previous binary"));
    }
    let (requester, writer) = (d.requester, d.writer.clone());
    match adopt(d, signals) {
        Ok(mut rt) => {
            rt.upgraded(requester, &writer, failed);
            rt.run(false)
        }
        Err(e) => {
            // Past the point of return: what was taken is dropped, and the
            // watchdog ends the generations.
            log::error(&format!("cannot resume after an upgrade: {e:#}"));
            crate::startup::EXIT_STARTUP
        }
    }
}

/// Exec the previous binary with the same document, telling it why.
fn go_back(prev: i32, memfd: i32, why: &str) {
    log::error(&format!("cannot take over after the upgrade: {why}; going back"));
    outbox::flush_before_exit(Instant::now() + outbox::EXIT_FLUSH);
    let mut env = own_env();
    env.push((doc::RESUME_FD.into(), memfd.to_string().into()));
    env.push((doc::FAILED.into(), why.into()));
    let e = super::exec(std::path::Path::new(&format!("/proc/self/fd/{prev}")), &env);
    log::error(&format!("cannot go back to the previous binary: {e:#}"));
}

fn adopt(d: Doc, signals: nix::sys::signalfd::SignalFd) -> anyhow::Result<Runtime> {
    let now = Instant::now();
    log::set_level(d.log_level);
    let LoopOut { stdout, stderr, .. } = &d.rt;
    outbox::requeue(Stream::Stdout, stdout);
    outbox::requeue(Stream::Stderr, stderr);
    let _ = signals::become_subreaper();
    let rt = d.rt;
    let sd = SdNotify::from_env().unwrap_or_else(|e| {
        log::warn(&format!("{e:#}"));
        None
    });
    let io = Started {
        signals,
        control: Server::adopt(rt.control, now)?,
        sockets: Sockets::adopt(rt.sockets)?,
        notify_dir: NotifyDir::adopt(rt.notify_dir),
        sd,
        watch: rt.watch.map(|w| Watch::adopt(w, now)).transpose()?,
        watchdog: rt.watchdog.map(Watchdog::adopt).transpose()?,
        _pid_file: rt.pid_file.map(|(p, pid)| PidFile::adopt(p, pid)),
    };
    let sup = Supervisor::import(d.cfg.policy.clone(), d.sup, now);
    let mut r = Runtime::new(d.cfg, io, sup);
    r.started = now.checked_sub(rt.uptime).unwrap_or(now);
    for g in rt.gens {
        let notify = NotifySocket::adopt(g.notify.0, g.notify.1)?;
        let io = GenIo {
            leader: g.leader,
            main: g.main,
            notify,
            probe: None,
            status: g.status,
            waiting: None,
        };
        r.gens.insert(g.id, io);
    }
    for (gen, c) in rt.outputs {
        r.outputs.insert(gen, Captured::adopt(c)?);
    }
    r.tails = rt.tails.into();
    r.watched = rt.watched;
    r.last_ok_reload = rt.last_ok_reload;
    r.events = Events::adopt(rt.events, rt.next_seq, rt.followers);
    for (gen, emptying) in r.sup.carried_gens() {
        if emptying {
            r.drains.watch(gen, now);
        }
    }
    // A child may have exited during the exec.
    r.reap_due = true;
    Ok(r)
}

impl Runtime {
    /// Tell the client, the log and the followers that the upgrade is
    /// done, or why it went back.
    fn upgraded(&mut self, requester: u64, from: &str, failed: Option<String>) {
        let to = env!("CARGO_PKG_VERSION").to_string();
        let pid = std::process::id();
        let generations = self.gens.len();
        let reply = match failed {
            None => {
                let s = if generations == 1 { "" } else { "s" };
                log::info(&format!(
                    "upgraded: graceexec {from} → {to}, pid {pid}, {generations} generation{s} kept"
                ));
                let version = format!("{from} → {to}");
                self.event("upgraded", None, |e| e.version = Some(version));
                Answer::Upgraded { from: from.to_string(), to, pid, generations }
            }
            Some(why) => {
                let why = format!(
                    "the new binary could not take over ({why}); graceexec {to} carries on"
                );
                log::warn(&format!("upgrade failed: {why}"));
                self.event("upgrade_refused", None, |e| e.why = Some(why.clone()));
                Answer::Error { error: why }
            }
        };
        self.io.control.reply(requester, Reply::new(reply), true);
    }
}
