//! graceexec: hold listening sockets and replace the server behind them
//! with zero dropped connections. See README.md.

#![deny(unsafe_code)]

mod carry;
mod check;
mod cli;
mod config;
mod control;
mod env;
mod event_loop;
mod fdstore;
mod listen;
mod log;
mod metrics;
mod notify;
mod outbox;
mod output;
mod pidfile;
mod procfs;
mod readiness;
mod shell;
mod signals;
mod sockets;
mod sockfile;
mod startup;
mod steer;
mod supervisor;
#[allow(unsafe_code)]
mod sys;
mod units;
mod user;
mod watch;
mod watchdog;

use cli::Sub;
use control::client;
use event_loop::upgrade;

fn main() {
    // First: a signal that comes while the command line is parsed (host
    // names and users are looked up there, which can take seconds) must
    // wait for the event loop, not kill graceexec with its default action.
    let before = signals::block_all();
    let code = run(before);
    // The last lines ("exiting with status 0") still reach a slow reader;
    // a stalled one holds the exit no longer than this.
    outbox::flush_before_exit(std::time::Instant::now() + outbox::EXIT_FLUSH);
    std::process::exit(code);
}

fn run(before: nix::Result<nix::sys::signal::SigSet>) -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == watchdog::MODE) {
        return watchdog::main(&args[2..]);
    }
    if args.get(1).is_some_and(|a| a == upgrade::CHECK_MODE) {
        return upgrade::check_main();
    }
    // The image `graceexec upgrade` executed: the command line is the
    // instance's, already acted on; the state comes from the document.
    if let Some(fd) = std::env::var_os(upgrade::RESUME_FD) {
        if let Err(e) = before {
            log::error(&format!("cannot block signals: {e}"));
        }
        return upgrade::resume(fd);
    }
    let cli = cli::parse();
    log::set_verbosity(cli.quiet, cli.verbose);
    let Some(sub) = &cli.sub else {
        if let Err(e) = before {
            log::error(&format!("cannot block signals: {e}"));
            return startup::EXIT_STARTUP;
        }
        return serve(cli);
    };
    // The client commands are ordinary commands: Ctrl-C ends them.
    if let Ok(mask) = &before {
        signals::restore(mask);
    }
    match sub {
        Sub::Reload { target, timeout, no_wait, canary } => {
            client::reload(target.which(), *timeout, !no_wait, *canary)
        }
        Sub::Promote { target } => client::decide(target.which(), control::Request::Promote),
        Sub::Rollback { target } => client::decide(target.which(), control::Request::Rollback),
        Sub::Status { target, json, prometheus } => {
            let format = match (json, prometheus) {
                (true, _) => client::Format::Json,
                (_, true) => client::Format::Prometheus,
                _ => client::Format::Text,
            };
            client::status(target.which(), format)
        }
        Sub::Events { target, json, since } => {
            control::follow::events(target.which(), *json, *since)
        }
        Sub::Stop { target, timeout } => client::stop(target.which(), *timeout),
        Sub::Upgrade { target, binary, timeout } => {
            client::upgrade(target.which(), binary.as_deref(), *timeout)
        }
        Sub::List { json } => client::list(*json),
        Sub::Completions { shell } => {
            print!("{}", cli::completions(*shell));
            client::EXIT_OK
        }
    }
}

/// The run form. Everything that owns resources lives in here, so that it
/// is dropped (socket files, the notify directory and the pid file
/// removed) before the exit.
fn serve(cli: cli::Cli) -> i32 {
    match startup::start(cli, startup::SignalsBlocked::assume()) {
        Ok((cfg, started)) => event_loop::run(cfg, started),
        Err(f) => {
            log::error(&f.message);
            f.code
        }
    }
}
