//! Command-line interface. Usage errors are one line and exit 2.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::control::client::Which;
use crate::control::paths::parse_name;
use crate::listen::{Addr, Spec};
use crate::readiness::Mode;
use crate::units::{parse_duration, parse_signal, SigNo};
use crate::user::Identity;

/// Which instance a client subcommand talks to.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Name of the instance (default: the only one running)
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,
    /// Path of its control socket, instead of --name
    #[arg(long, value_name = "PATH", conflicts_with = "name")]
    pub control: Option<PathBuf>,
}

impl Target {
    pub fn which(&self) -> Which<'_> {
        match (&self.name, &self.control) {
            (Some(n), _) => Which::Name(n),
            (None, Some(p)) => Which::Control(p),
            (None, None) => Which::Only,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compat {
    /// Also set SERVER_STARTER_PORT and SERVER_STARTER_GENERATION.
    ServerStarter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Reload a running instance and wait for the outcome (exit 0: the new
    /// generation is ready; 1: the reload failed and the old one keeps
    /// serving; 3: no such instance; 4: no answer within --timeout).
    Reload {
        #[command(flatten)]
        target: Target,
        /// How long to wait for the outcome.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
        /// Only ask for the reload; do not wait for its outcome.
        #[arg(long)]
        no_wait: bool,
        /// Steer only PCT% of new connections to the new generation until
        /// `graceexec promote` (or `rollback`); exit 0 once it serves.
        #[arg(long, value_name = "PCT", value_parser = parse_percent)]
        canary: Option<f64>,
    },
    /// Give a canary every new connection; the previous generation drains.
    Promote {
        #[command(flatten)]
        target: Target,
    },
    /// Return every new connection to the previous generation (a canary's,
    /// or the one --keep-old kept); the newer one drains.
    Rollback {
        #[command(flatten)]
        target: Target,
    },
    /// Show an instance: its sockets, generations and last reload.
    Status {
        #[command(flatten)]
        target: Target,
        /// One JSON object, as the control protocol sends it.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// The metrics, in the Prometheus text format (as --metrics-file).
        #[arg(long)]
        prometheus: bool,
    },
    /// Follow an instance's events (reloads, generations, restarts, share
    /// changes) as they happen, until it exits.
    Events {
        #[command(flatten)]
        target: Target,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// First replay the events kept after this sequence number (0: all
        /// kept, the last 512).
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
    },
    /// Stop an instance gracefully; returns once it has exited.
    Stop {
        #[command(flatten)]
        target: Target,
        /// How long to wait for it to exit.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Replace graceexec itself in place: the same pid, every socket and
    /// generation kept, nothing restarted.
    Upgrade {
        #[command(flatten)]
        target: Target,
        /// The new graceexec binary (default: the file now at the path the
        /// instance runs from).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// How long to wait for the new image to take over.
        #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// List the running instances of this user.
    List {
        /// A JSON array of their status objects.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Handover {
    Steer,
    Shared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Restart {
    /// Start a new generation, with backoff, when the current one dies.
    Always,
    /// Exit with the child's status when the current generation dies.
    Never,
}

const EXAMPLES: &str = "\
Examples:
  graceexec --listen 127.0.0.1:8080 -- python3 server.py
  graceexec --listen 8080 --ready http://127.0.0.1:8080/health --name api -- ./server --flag
  graceexec reload --name api || rollback-the-deploy
  graceexec reload --name api --canary 10 && graceexec promote --name api
  graceexec status --name api";

/// Hold listening sockets and replace the server behind them with zero
/// dropped connections.
///
/// graceexec binds the sockets once and runs COMMAND with them in the
/// systemd socket-activation convention (fds from 3, LISTEN_FDS, LISTEN_PID,
/// LISTEN_FDNAMES, NOTIFY_SOCKET). On SIGHUP, SIGUSR2 or `graceexec reload`
/// it starts a replacement, waits until it is ready, and only then stops
/// the old one.
#[derive(Debug, Parser)]
#[command(
    name = "graceexec",
    version,
    max_term_width = 100,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    override_usage = "graceexec [OPTIONS] -- COMMAND [ARGS]...\n       graceexec reload|promote|rollback|status|events|stop|upgrade|list [OPTIONS]",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub sub: Option<Sub>,

    /// Socket to bind and pass on; repeatable. ADDR: PORT, :PORT, HOST:PORT,
    /// [V6]:PORT, tcp://HOST:PORT, udp://HOST:PORT, unix:/PATH, unix:@NAME.
    /// NAME= sets its LISTEN_FDNAMES name (default from the address, e.g.
    /// tcp-8080). Without --listen, sockets passed by systemd are adopted.
    #[arg(short, long, value_name = "[NAME=]ADDR", value_parser = parse_spec)]
    pub listen: Vec<Spec>,

    /// When a new generation counts as ready: notify, accept, delay:DURATION,
    /// tcp:HOST:PORT, http://HOST:PORT/PATH or exec:COMMAND. Default: READY=1
    /// or, with steered sockets, a connection accepted on each (else 1s
    /// alive), whichever comes first.
    #[arg(long, value_name = "MODE", value_parser = parse_ready)]
    pub ready: Option<Mode>,

    /// Name of this instance, for `graceexec reload --name` and friends.
    /// Default: the file name of COMMAND.
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,

    /// How a new generation takes over TCP sockets graceexec binds: steer
    /// (each generation its own socket; new connections steered to the new
    /// one, the old one stopped once it has nothing left) or shared (one
    /// socket for all, as systemd or a peer would pass it).
    #[arg(long, value_enum, value_name = "HOW", default_value_t = Handover::Steer)]
    pub handover: Handover,

    /// A generation not ready by then has failed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// With steering: how long a generation that new connections no longer
    /// go to may take to finish what it has before it is sent the stop
    /// signal anyway (idle keep-alive connections hold it that long).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain_wait: Duration,

    /// Signal that asks a generation to drain and exit.
    #[arg(long, value_name = "SIG", default_value = "TERM", value_parser = parse_signal)]
    pub stop_signal: SigNo,

    /// Time a stopping generation has before its process group gets SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub stop_timeout: Duration,

    /// What to do when the serving generation dies on its own.
    #[arg(long, value_enum, default_value_t = Restart::Always)]
    pub restart: Restart,

    /// With steering: after a promotion, keep the previous generation alive
    /// and idle this long, so `graceexec rollback` returns to it at once.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub keep_old: Duration,

    /// Promote a canary (`reload --canary`) still up after this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub promote_after: Option<Duration>,

    /// With steering: each reload's new generation gets a share of new
    /// connections rising from 0 to 100% over this long (a warm-up).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ramp: Option<Duration>,

    /// Where to put the control socket. Default:
    /// $XDG_RUNTIME_DIR/graceexec/NAME.sock, /run/graceexec/NAME.sock for
    /// root, else a private directory under /tmp.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Keep the instance's metrics here, in the Prometheus text format,
    /// replaced atomically at every change (node_exporter's textfile
    /// collector reads such files).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,

    /// Under systemd, with FileDescriptorStoreMax= set: keep the TCP and
    /// UDP sockets graceexec binds in the service manager's file
    /// descriptor store, and take them back at the next start, so that
    /// `systemctl restart` refuses no connection. Implied by $FDSTORE
    /// (systemd 254 and later).
    #[arg(long)]
    pub fdstore: bool,

    /// Write graceexec's pid here (atomically); removed at exit.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// Start every generation, the check and exec probes in this directory,
    /// looked up by name at each start (default: the directory graceexec
    /// was started in, as $PWD names it, so a repointed symlink is followed).
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Bind the sockets, then run graceexec and every generation as USER
    /// (with its groups). Needs root.
    #[arg(long, value_name = "USER[:GROUP]", value_parser = crate::user::parse)]
    pub user: Option<Identity>,

    /// Shell command run before each reload (a config test, say); if it
    /// fails, the reload fails with its output and nothing is started.
    #[arg(long, value_name = "COMMAND")]
    pub check: Option<String>,

    /// Reload when this file changes (e.g. a new binary moved into place);
    /// repeatable. Changes are debounced.
    #[arg(long, value_name = "PATH")]
    pub watch: Vec<PathBuf>,

    /// Put "[gen K pid P] " before each line the server writes to stdout
    /// and stderr.
    #[arg(long)]
    pub log_prefix: bool,

    /// Also export another tool's variables, so servers written for it run
    /// unchanged.
    #[arg(long, value_enum, value_name = "TOOL")]
    pub compat: Option<Compat>,

    /// Listen backlog of TCP and unix stream sockets.
    #[arg(long, value_name = "N", default_value_t = nix::libc::SOMAXCONN,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub backlog: i32,

    /// Permissions of unix socket files, in octal (e.g. 660).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub unix_mode: Option<u32>,

    /// Only warnings and errors.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Also debug lines (notify messages, probe attempts, reaped orphans).
    #[arg(short, long)]
    pub verbose: bool,

    /// The server and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// A share of new connections, in percent: more than 0, less than 100.
fn parse_percent(s: &str) -> Result<f64, String> {
    let n: f64 =
        s.trim_end_matches('%').parse().map_err(|_| format!("'{s}' is not a percentage"))?;
    if n > 0.0 && n < 100.0 {
        Ok(n)
    } else {
        Err(format!("'{s}': a canary's share is more than 0 and less than 100"))
    }
}

fn parse_spec(s: &str) -> Result<Spec, String> {
    s.parse()
}

fn parse_ready(s: &str) -> Result<Mode, String> {
    s.parse()
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("'{s}' is not an octal mode such as 600 or 660"))
}

/// The completion script for `shell`, generated from the same definitions
/// as the parser (the committed copies under completions/ are tested
/// against it).
pub fn completions(shell: Shell) -> String {
    use clap::CommandFactory;
    let target = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(target, &mut Cli::command(), "graceexec", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse the command line. On a usage error, print one line and exit 2.
pub fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => match consistent(&cli) {
            Ok(()) => cli,
            Err(msg) => {
                eprintln!("graceexec: {msg}; see 'graceexec --help'");
                std::process::exit(2);
            }
        },
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("graceexec: {}", usage::explain(&e));
            std::process::exit(2);
        }
    }
}

/// What clap cannot check one argument at a time. A name given twice
/// would make two sockets indistinguishable in LISTEN_FDNAMES, and an
/// address given twice would fail to bind with a misleading "is another
/// server on it?". Port 0 twice is two ephemeral ports, which is fine.
fn consistent(cli: &Cli) -> Result<(), String> {
    if cli.sub.is_none() && cli.command.first().is_some_and(|c| c.is_empty()) {
        return Err("COMMAND is empty".into());
    }
    for (i, a) in cli.listen.iter().enumerate() {
        for b in &cli.listen[..i] {
            if let (Some(n), Some(m)) = (&a.name, &b.name) {
                if n == m {
                    return Err(format!("--listen name '{n}' is given twice"));
                }
            }
            let ephemeral = matches!(a.addr, Addr::Tcp(s) | Addr::Udp(s) if s.port() == 0);
            if a.addr == b.addr && !ephemeral {
                return Err(format!("--listen {} is given twice", a.addr));
            }
        }
    }
    Ok(())
}

mod usage;

#[cfg(test)]
mod tests;
