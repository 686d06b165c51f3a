//! graceexec: hold listening sockets and replace the server behind them
//! with zero dropped connections. See README.md.

mod check;
mod cli;
mod control;
mod event_loop;
mod listen;
mod log;
mod notify;
mod outbox;
mod output;
mod pidfile;
mod readiness;
mod sockfile;
mod spawn;
mod supervisor;
mod user;
mod watch;
mod watchdog;

use cli::{Cli, Sub};
use control::client;
use readiness::Mode;
use supervisor::{Config, Supervisor};

/// Exit codes of graceexec's own failures; a child's status passes through.
const EXIT_STARTUP: i32 = 1;
const EXIT_USAGE: i32 = 2;

fn main() {
    let code = run();
    // The last lines ("exiting with status 0") still reach a slow reader;
    // a stalled one holds the exit no longer than this.
    outbox::flush_before_exit(std::time::Instant::now() + outbox::EXIT_FLUSH);
    std::process::exit(code);
}

fn run() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == watchdog::MODE) {
        return watchdog::main(&args[2..]);
    }
    let cli = cli::parse();
    log::set_verbosity(cli.quiet, cli.verbose);
    match &cli.sub {
        None => serve(cli),
        Some(Sub::Reload { target, timeout, no_wait }) => {
            client::reload(target, *timeout, !no_wait)
        }
        Some(Sub::Status { target, json }) => client::status(target, *json),
        Some(Sub::Stop { target, timeout }) => client::stop(target, *timeout),
        Some(Sub::List { json }) => client::list(*json),
        Some(Sub::Completions { shell }) => {
            print!("{}", cli::completions(*shell));
            client::EXIT_OK
        }
    }
}

/// Log `e` and return `code`: the one way start-up fails.
fn fail(code: i32, e: impl std::fmt::Display) -> i32 {
    log::error(&e.to_string());
    code
}

/// The run form. Everything that owns resources lives in here, so that it
/// is dropped (socket files, the notify directory and the pid file
/// removed) before the exit.
fn serve(cli: Cli) -> i32 {
    let name =
        match cli.name.clone().map_or_else(|| control::paths::default_name(&cli.command[0]), Ok) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("graceexec: {e}; see 'graceexec --help'");
                return EXIT_USAGE;
            }
        };
    let mask = match event_loop::block_signals() {
        Ok(m) => m,
        Err(e) => return fail(EXIT_STARTUP, format!("cannot block signals: {e}")),
    };
    // A missing command is reported before anything is bound.
    if let Err(e) = event_loop::resolve(&cli.command[0]) {
        return fail(e.code, e.message);
    }
    // systemd's sockets are adopted before graceexec opens anything, so no
    // fd of ours can take a number LISTEN_FDS names.
    let adopted = if cli.listen.is_empty() {
        match listen::from_systemd() {
            Ok(Some(l)) => Some(l),
            Ok(None) => return fail(EXIT_USAGE, "nothing to listen on: give --listen ADDR, or start graceexec by systemd socket activation"),
            Err(e) => {
                return fail(EXIT_STARTUP, format!("cannot adopt the sockets systemd passed: {e:#}"))
            }
        }
    } else {
        None
    };
    // From here on, graceexec's output never blocks. After the adoption:
    // it opens fds.
    outbox::init(true);
    let control_path = match &cli.control {
        Some(p) => p.clone(),
        None => {
            let dir = control::paths::default_dir();
            if let Err(e) = control::paths::ensure_dir(&dir) {
                return fail(EXIT_STARTUP, format!("{e:#}"));
            }
            control::paths::socket_path(&dir, &name)
        }
    };
    let control = match control::server::Server::bind(&control_path, &name) {
        Ok((server, note)) => {
            if let Some(n) = note {
                log::info(&n);
            }
            server
        }
        Err(e) => return fail(EXIT_STARTUP, format!("{e:#}")),
    };
    log::debug(&format!("control socket at {}", control.path().display()));
    // Bound after the control socket: a second instance is refused before
    // it could fail on a port the first one holds, with the message that
    // matters.
    let listeners = match adopted {
        Some(l) => l,
        None => {
            let mut bound = Vec::with_capacity(cli.listen.len());
            for spec in &cli.listen {
                match listen::bind_spec(spec, cli.backlog, cli.unix_mode) {
                    Ok(l) => bound.push(l),
                    Err(e) => return fail(EXIT_STARTUP, format!("{e:#}")),
                }
            }
            bound
        }
    };
    // Created after adopting systemd's sockets, so it cannot take one of
    // the fds LISTEN_FDS names.
    let signals = match spawn::signalfd(&mask) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_STARTUP, format!("cannot set up signal handling: {e}")),
    };
    for l in &listeners {
        log::info(&format!("bound {} as {}", l.shown, l.name));
    }
    // Orphaned grandchildren are re-parented to graceexec and reaped.
    if let Err(e) = spawn::become_subreaper() {
        log::debug(&format!("cannot become a subreaper: {e}"));
    }
    let sd = match notify::SdNotify::from_env() {
        Ok(sd) => sd,
        Err(e) => return fail(EXIT_STARTUP, format!("{e:#}")),
    };
    let watch = match cli.watch.is_empty() {
        true => None,
        false => match watch::Watch::new(&cli.watch) {
            Ok(w) => Some(w),
            Err(e) => return fail(EXIT_STARTUP, format!("{e:#}")),
        },
    };
    let _pid_file = match cli.pid_file.as_deref().map(pidfile::PidFile::write).transpose() {
        Ok(p) => p,
        Err(e) => return fail(EXIT_STARTUP, format!("{e:#}")),
    };
    let mut extra_env = Vec::new();
    if let Some(id) = &cli.user {
        // Reloads never bind again, so nothing after this needs root. The
        // control socket is handed over so that graceexec can still be
        // reached as USER; the notify directory is created after the drop.
        if let Err(e) = control.chown(id.uid, id.gid).and_then(|()| user::drop_to(id)) {
            return fail(EXIT_STARTUP, format!("{e:#}"));
        }
        log::info(&format!(
            "running as {}:{} (uid {}, gid {})",
            id.name, id.group_name, id.uid, id.gid
        ));
        extra_env = user::env(id);
        // root's runtime directory is not USER's: the children and the
        // notify directory must not try to use it.
        std::env::remove_var("XDG_RUNTIME_DIR");
    }
    let notify_dir = match notify::NotifyDir::create() {
        Ok(d) => d,
        Err(e) => return fail(EXIT_STARTUP, format!("{e:#}")),
    };
    log::debug(&format!("notify sockets in {}", notify_dir.path().display()));
    let server_starter = (cli.compat == Some(cli::Compat::ServerStarter))
        .then(|| listen::server_starter_port(&listeners));

    // Last, so that no start-up failure can leave it behind; after the
    // --user drop, so that it can do no more than graceexec could.
    let watchdog = match watchdog::Watchdog::start(cli.stop_timeout) {
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
    let cfg = Config {
        ready: Mode::policy(cli.ready.as_ref()),
        ready_timeout: cli.ready_timeout,
        stop_timeout: cli.stop_timeout,
        stop_signal: cli.stop_signal,
        restart: cli.restart == cli::Restart::Always,
        check: cli.check.is_some(),
    };
    event_loop::run(event_loop::Setup {
        sup: Supervisor::new(cfg),
        signals,
        listeners,
        command: cli.command,
        ready: cli.ready,
        stop_signal: cli.stop_signal,
        notify_dir,
        verbose: cli.verbose,
        control,
        sd,
        log_prefix: cli.log_prefix,
        extra_env,
        server_starter,
        check: cli.check,
        watch,
        watchdog,
    })
}
