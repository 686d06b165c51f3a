//! Start-up of the run form, as a pipeline whose types encode the order:
//!
//! signals blocked (main's first instruction) → systemd's sockets adopted →
//! control socket → listeners → privileges dropped → watchdog.
//!
//! - systemd's sockets are adopted before graceexec opens anything, so no
//!   fd of ours can take a number LISTEN_FDS names;
//! - the control socket comes before the listeners: a second instance is
//!   refused with the message that matters, before it could fail on a port
//!   the first one holds;
//! - privileges are dropped once everything that needs root is bound;
//!   reloads never bind again;
//! - the watchdog comes last, so no start-up failure can leave it behind,
//!   and after the drop, so that it can do no more than graceexec could.
//!
//! Each stage consumes the one before; a failure is one line and an exit
//! code, and everything made so far is dropped on the way out (socket
//! files, the pid file, the notify directory removed).

use nix::sys::signalfd::SignalFd;

use crate::cli::{Cli, Compat};
use crate::config::Config;
use crate::control::{paths, server::Server};
use crate::fdstore::{self, Store, Stored};
use crate::listen::{self, Listener};
use crate::notify::{NotifyDir, SdNotify};
use crate::pidfile::PidFile;
use crate::sockets::Sockets;
use crate::watch::Watch;
use crate::watchdog::Watchdog;
use crate::{log, signals, user};

/// Exit codes of graceexec's own failures; a child's status passes through.
pub const EXIT_STARTUP: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// Why start-up failed: one line, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure { code: EXIT_STARTUP, message: format!("{e:#}") }
    }
}

fn failure(code: i32, message: impl Into<String>) -> Failure {
    Failure { code, message: message.into() }
}

/// What the event loop runs with; dropping it cleans up.
pub struct Started {
    pub signals: SignalFd,
    pub control: Server,
    pub sockets: Sockets,
    pub notify_dir: NotifyDir,
    pub sd: Option<SdNotify>,
    pub watch: Option<Watch>,
    pub watchdog: Option<Watchdog>,
    /// Removed when dropped.
    pub _pid_file: Option<PidFile>,
}

/// Proof that every signal is blocked: the first stage.
pub struct SignalsBlocked(());

impl SignalsBlocked {
    /// Only `main` makes one, right after `signals::block_all`.
    pub fn assume() -> SignalsBlocked {
        SignalsBlocked(())
    }
}

struct Adopted {
    cli: Cli,
    cfg: Config,
    signals: SignalFd,
    systemd: Option<Vec<Listener>>,
    /// Sockets of a previous run, back from systemd's store.
    stored: Stored,
}

struct Reachable {
    prev: Adopted,
    control: Server,
}

struct Bound {
    prev: Reachable,
    sockets: Sockets,
    sd: Option<SdNotify>,
    watch: Option<Watch>,
    pid_file: Option<PidFile>,
}

struct Dropped {
    prev: Bound,
    notify_dir: NotifyDir,
}

/// Run every stage; the configuration and what the loop runs with.
pub fn start(cli: Cli, blocked: SignalsBlocked) -> Result<(Config, Started), Failure> {
    let adopted = blocked.adopt(cli)?;
    let reachable = adopted.control()?;
    let bound = reachable.bind()?;
    let dropped = bound.drop_privileges()?;
    Ok(dropped.watchdog())
}

impl SignalsBlocked {
    fn adopt(self, cli: Cli) -> Result<Adopted, Failure> {
        let name = match cli.name.clone() {
            Some(n) => n,
            None => paths::default_name(&cli.command[0])
                .map_err(|e| failure(EXIT_USAGE, format!("{e}; see 'graceexec --help'")))?,
        };
        let cfg = Config::new(&cli, name);
        // A missing command is reported before anything is bound.
        cfg.resolve_command().map_err(|e| failure(e.code, e.message))?;
        let passed = listen::from_systemd().map_err(|e| {
            failure(EXIT_STARTUP, format!("cannot adopt the sockets systemd passed: {e:#}"))
        })?;
        // Our output never blocks from here on (outbox.rs), the warnings
        // about what systemd passed included. After adopting systemd's
        // sockets: it opens fds, which must not take a number LISTEN_FDS
        // names; before the watchdog, which is handed the non-blocking
        // descriptions, and before --user drops the right to reopen them.
        crate::outbox::init(true);
        let nothing = "nothing to listen on: give --listen ADDR, or start graceexec by systemd socket activation";
        let (systemd, stored) = match (cli.listen.is_empty(), passed) {
            (true, Some(l)) => {
                let (old, l) = Stored::sort(l);
                forget_stored(old);
                match l.is_empty() {
                    true => return Err(failure(EXIT_USAGE, nothing)),
                    false => (Some(l), Stored::default()),
                }
            }
            (true, None) => return Err(failure(EXIT_USAGE, nothing)),
            // With --listen, only what graceexec stored itself is taken
            // back; anything else systemd passed is not served.
            (false, Some(l)) => {
                let (stored, other) = Stored::sort(l);
                for l in other {
                    log::warn(&format!(
                        "not serving {} ({}) that systemd passed: --listen is given",
                        l.name, l.shown
                    ));
                }
                (None, stored)
            }
            (false, None) => (None, Stored::default()),
        };
        // After adopting systemd's sockets, so it cannot take one of the
        // fds LISTEN_FDS names.
        let signals = signals::signalfd()
            .map_err(|e| failure(EXIT_STARTUP, format!("cannot set up signal handling: {e}")))?;
        Ok(Adopted { cli, cfg, signals, systemd, stored })
    }
}

/// Sockets graceexec stored in an earlier run with `--listen`, passed back
/// to one without: not the socket unit's to serve (a unit moved to socket
/// activation, or --listen dropped). Closed, and removed from the store.
fn forget_stored(old: Stored) {
    let names = old.left();
    if names.is_empty() {
        return;
    }
    log::warn(&format!(
        "not serving the {} socket(s) an earlier graceexec stored with --listen: there is no --listen now; removed from the file descriptor store",
        names.len()
    ));
    if let Some(store) = Store::from_env() {
        store.set_patient(true);
        names.iter().for_each(|n| store.remove(n));
    }
}

impl Adopted {
    fn control(self) -> Result<Reachable, Failure> {
        let path = match &self.cli.control {
            Some(p) => p.clone(),
            None => {
                let dir = paths::default_dir();
                paths::ensure_dir(&dir)?;
                paths::socket_path(&dir, &self.cfg.name)
            }
        };
        let (control, note) = Server::bind(&path, &self.cfg.name)?;
        if let Some(n) = note {
            log::info(&n);
        }
        log::debug(&format!("control socket at {}", control.path().display()));
        Ok(Reachable { prev: self, control })
    }
}

impl Reachable {
    fn bind(mut self) -> Result<Bound, Failure> {
        let cli = &self.prev.cli;
        let store = match fdstore::wanted(cli.fdstore) {
            true => Store::from_env(),
            false => None,
        };
        if cli.fdstore && store.is_none() {
            log::warn("--fdstore: no NOTIFY_SOCKET; the sockets are not stored");
        }
        self.prev.cfg.fdstore = store.is_some();
        self.prev.cfg.policy.park_at_stop = store.is_some();
        let stored = std::mem::take(&mut self.prev.stored);
        let sockets = match self.prev.systemd.take() {
            Some(l) => Sockets::adopted(l),
            None => Sockets::bind(
                &cli.listen,
                cli.backlog,
                cli.unix_mode,
                cli.handover,
                (stored, store),
            )?,
        };
        self.prev.cfg.policy.steer = sockets.steering();
        for (name, shown, steered) in sockets.describe() {
            let how = if steered { " (steered)" } else { "" };
            log::info(&format!("bound {shown} as {name}{how}"));
        }
        if cli.compat == Some(Compat::ServerStarter) {
            let shown: Vec<&str> = sockets.describe().into_iter().map(|(_, s, _)| s).collect();
            let pairs: Vec<_> = sockets.first_fds().into_iter().zip(shown).collect();
            self.prev.cfg.server_starter = Some(listen::server_starter_port(&pairs));
        }
        // Orphans of graceexec's children are re-parented to graceexec and
        // reaped.
        if let Err(e) = signals::become_subreaper() {
            log::debug(&format!("cannot become a subreaper: {e}"));
        }
        let sd = SdNotify::from_env()?;
        let watch = match cli.watch.is_empty() {
            true => None,
            false => Some(Watch::new(&cli.watch)?),
        };
        let pid_file = cli.pid_file.as_deref().map(PidFile::write).transpose()?;
        Ok(Bound { prev: self, sockets, sd, watch, pid_file })
    }
}

impl Bound {
    fn drop_privileges(mut self) -> Result<Dropped, Failure> {
        if let Some(id) = self.prev.prev.cli.user.clone() {
            // The control socket is handed over so that graceexec can still
            // be reached as USER; the notify directory is made after the
            // drop, so USER owns it.
            self.prev.control.chown(id.uid, id.gid)?;
            user::drop_to(&id)?;
            log::info(&format!(
                "running as {}:{} (uid {}, gid {})",
                id.name, id.group_name, id.uid, id.gid
            ));
            let cfg = &mut self.prev.prev.cfg;
            cfg.user_env = user::env(&id);
            // root's runtime directory is not USER's: the children and the
            // notify directory must not try to use it.
            cfg.env_remove.push("XDG_RUNTIME_DIR".into());
            std::env::remove_var("XDG_RUNTIME_DIR");
        }
        let notify_dir = NotifyDir::create()?;
        log::debug(&format!("notify sockets in {}", notify_dir.path().display()));
        Ok(Dropped { prev: self, notify_dir })
    }
}

impl Dropped {
    fn watchdog(self) -> (Config, Started) {
        let Dropped {
            prev:
                Bound {
                    prev: Reachable { prev: Adopted { cfg, signals, .. }, control },
                    sockets,
                    sd,
                    watch,
                    pid_file,
                },
            notify_dir,
        } = self;
        let watchdog = match Watchdog::start(cfg.policy.stop_timeout) {
            Ok(w) => {
                log::debug(&format!("watchdog is pid {}", w.pid()));
                Some(w)
            }
            Err(e) => {
                log::warn(&format!(
                    "cannot start the watchdog: {e}; if graceexec is killed, processes the servers started may be left running"
                ));
                None
            }
        };
        let started = Started {
            signals,
            control,
            sockets,
            notify_dir,
            sd,
            watch,
            watchdog,
            _pid_file: pid_file,
        };
        (cfg, started)
    }
}
