//! One-line usage errors, the committed man page, and what the
//! parser refuses.

use super::*;

mod man;

#[test]
fn usage_is_one_line() {
    let e = Cli::try_parse_from(["graceexec", "--listen", "nope", "--", "x"]).unwrap_err();
    let line = usage::one_line(&e.render().to_string());
    assert!(!line.contains('\n'), "{line}");
    assert!(line.contains("nope"), "{line}");
}

#[test]
fn a_missing_argument_is_named() {
    let e = Cli::try_parse_from(["graceexec"]).unwrap_err();
    let line = usage::one_line(&e.render().to_string());
    assert!(line.contains("<COMMAND>"), "{line}");
}

/// The committed man page matches the parser and doc/graceexec.1.in.
/// Regenerate with scripts/generate.sh.
#[test]
fn man_page_is_up_to_date() {
    let out = man::page();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("doc/graceexec.1");
    if std::env::var_os("GRACEEXEC_REGENERATE").is_some() {
        std::fs::write(&path, &out).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == out, "doc/graceexec.1 is out of date: run scripts/generate.sh");
}

/// Regression: the page pointed to graceexec-reload(1) and others that
/// were never written; the commands are described in the page itself.
#[test]
fn man_page_refers_to_no_graceexec_page_but_itself() {
    assert_eq!(subpages(".TP\ngraceexec\\-reload(1)\n"), ["graceexec\\-reload(1)"]);
    assert_eq!(subpages("\\fBgraceexec\\-stop\\fR(1)"), ["graceexec\\-stop\\fR(1)"]);
    let page = man::page();
    assert_eq!(subpages(&page), Vec::<&str>::new());
    let synopsis = &page[page.find(".SH SYNOPSIS").unwrap()..page.find(".SH DESCRIPTION").unwrap()];
    assert!(synopsis.contains("\\fB\\-\\-\\fR\n\\fICOMMAND"), "{synopsis}");
}

/// References such as `graceexec\-reload(1)` in roff.
fn subpages(roff: &str) -> Vec<&str> {
    roff.split_whitespace()
        .filter_map(|w| w.find("graceexec\\-").map(|i| &w[i..]))
        .filter(|w| {
            w.split_once('(').is_some_and(|(_, s)| s.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect()
}

#[test]
fn subcommands_and_the_run_form_do_not_mix() {
    assert!(Cli::try_parse_from(["graceexec", "reload", "--name", "api"]).is_ok());
    assert!(Cli::try_parse_from(["graceexec", "-l", "80", "reload"]).is_err());
    let cli = Cli::try_parse_from(["graceexec", "-l", "80", "--", "reload"]).unwrap();
    assert!(cli.sub.is_none() && cli.command == vec![OsString::from("reload")]);
}

fn consistency(args: &[&str]) -> Result<(), String> {
    consistent(&Cli::try_parse_from(args).unwrap())
}

#[test]
fn listen_names_and_addresses_given_twice_are_refused() {
    // Regression: duplicate names were passed on in LISTEN_FDNAMES, and
    // a duplicate address failed with "is another server on it?".
    let twice = ["graceexec", "-l", "a=127.0.0.1:0", "-l", "a=127.0.0.1:0", "--", "x"];
    assert_eq!(consistency(&twice), Err("--listen name 'a' is given twice".into()));
    let twice = ["graceexec", "-l", "127.0.0.1:80", "-l", "x=127.0.0.1:80", "--", "x"];
    assert_eq!(consistency(&twice), Err("--listen 127.0.0.1:80 is given twice".into()));
    assert!(consistency(&["graceexec", "-l", "unix:/a", "-l", "unix:/a", "--", "x"]).is_err());
    assert!(
        consistency(&["graceexec", "-l", "127.0.0.1:0", "-l", "127.0.0.1:0", "--", "x"]).is_ok()
    );
    assert!(consistency(&["graceexec", "-l", "80", "-l", "udp://:80", "--", "x"]).is_ok());
    assert!(consistency(&["graceexec", "-l", "80", "--", ""]).is_err());
}

#[test]
fn command_after_double_dash() {
    let cli = Cli::try_parse_from(["graceexec", "-l", "8080", "--", "srv", "--flag"]).unwrap();
    assert_eq!(cli.command, vec![OsString::from("srv"), OsString::from("--flag")]);
    assert!(Cli::try_parse_from(["graceexec", "-l", "8080"]).is_err());
}

/// `--help` as a newcomer reads it: the flags everybody needs first, then
/// examples, and a usage line that names every command.
#[test]
fn help_puts_listen_ready_and_name_first_and_ends_with_examples() {
    use clap::CommandFactory;
    let help = Cli::command().render_long_help().to_string();
    let options = &help[help.find("Options:").expect("an Options block")..];
    let flags: Vec<&str> = options
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_once("--").map(|(_, f)| f))
        .filter_map(|f| f.split([' ', '<', ',']).next())
        .take(3)
        .collect();
    assert_eq!(flags, ["listen", "ready", "name"], "{options}");
    let examples = &help[help.find("Examples:").expect("an Examples block")..];
    assert!(examples.contains(" -- python3 server.py"), "{examples}");
    let usage = help.lines().skip_while(|l| !l.starts_with("Usage:")).nth(1).unwrap();
    for sub in Cli::command().get_subcommands().map(|c| c.get_name()) {
        assert!(sub == "completions" || usage.contains(sub), "{sub} not in: {usage}");
    }
}
