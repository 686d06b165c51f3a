//! graceexec: hold listening sockets and replace the server behind them
//! with zero dropped connections. See README.md.

mod check;
mod cli;
mod control;
mod event_loop;
mod listen;
mod log;
mod notify;
mod output;
mod readiness;
mod spawn;
mod supervisor;
mod user;
mod watch;

use readiness::Mode;
use supervisor::{Config, Supervisor};

/// Exit codes of graceexec's own failures; a child's status passes through.
const EXIT_STARTUP: i32 = 1;
const EXIT_USAGE: i32 = 2;

fn main() {
    let code = run();
    std::process::exit(code);
}

/// Everything that owns resources lives in here, so that it is dropped
/// (unix socket files and the notify directory removed) before the exit.
fn run() -> i32 {
    let cli = cli::parse();
    log::set_verbosity(cli.quiet, cli.verbose);

    let mask = match event_loop::block_signals() {
        Ok(m) => m,
        Err(e) => {
            log::error(&format!("cannot block signals: {e}"));
            return EXIT_STARTUP;
        }
    };
    // A missing command is reported before anything is bound.
    if let Err(e) = event_loop::resolve(&cli.command[0]) {
        log::error(&e.message);
        return e.code;
    }
    let listeners = if cli.listen.is_empty() {
        match listen::from_systemd() {
            Ok(Some(l)) => l,
            Ok(None) => {
                log::error("nothing to listen on: give --listen ADDR, or start graceexec by systemd socket activation");
                return EXIT_USAGE;
            }
            Err(e) => {
                log::error(&format!("cannot adopt the sockets systemd passed: {e:#}"));
                return EXIT_STARTUP;
            }
        }
    } else {
        let mut bound = Vec::with_capacity(cli.listen.len());
        for spec in &cli.listen {
            match listen::bind_spec(spec, cli.backlog, cli.unix_mode) {
                Ok(l) => bound.push(l),
                Err(e) => {
                    log::error(&format!("{e:#}"));
                    return EXIT_STARTUP;
                }
            }
        }
        bound
    };
    // Created after adopting systemd's sockets, so it cannot take one of
    // the fds LISTEN_FDS names.
    let signals = match spawn::signalfd(&mask) {
        Ok(s) => s,
        Err(e) => {
            log::error(&format!("cannot set up signal handling: {e}"));
            return EXIT_STARTUP;
        }
    };
    for l in &listeners {
        log::info(&format!("bound {} as {}", l.shown, l.name));
    }
    // Orphaned grandchildren are re-parented to graceexec and reaped.
    if let Err(e) = spawn::become_subreaper() {
        log::debug(&format!("cannot become a subreaper: {e}"));
    }
    let notify_dir = match notify::NotifyDir::create() {
        Ok(d) => d,
        Err(e) => {
            log::error(&format!("{e:#}"));
            return EXIT_STARTUP;
        }
    };
    log::debug(&format!("notify sockets in {}", notify_dir.path().display()));

    let cfg = Config {
        ready: Mode::policy(cli.ready.as_ref()),
        ready_timeout: cli.ready_timeout,
        stop_timeout: cli.stop_timeout,
        stop_signal: cli.stop_signal,
        restart: cli.restart == cli::Restart::Always,
    };
    let runtime = event_loop::Runtime {
        sup: Supervisor::new(cfg),
        signals,
        listeners,
        command: cli.command,
        ready: cli.ready,
        stop_signal: cli.stop_signal,
        notify_dir,
        verbose: cli.verbose,
    };
    runtime.run()
}
