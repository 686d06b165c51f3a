//! Usage errors as one line that says what to do: clap's message, minus
//! its usage block, with better advice for the common mistakes (a server
//! command without `--` before it, a misspelt command).

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// The commands, for "did you mean": the parser's own, so that none is
/// left out when one is added.
fn commands() -> Vec<String> {
    use clap::CommandFactory;
    let mut names: Vec<String> =
        super::Cli::command().get_subcommands().map(|c| c.get_name().to_string()).collect();
    names.push("help".into());
    names
}

pub fn explain(e: &clap::Error) -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    explain_args(e, &args)
}

/// `args`: the command line without the program name.
fn explain_args(e: &clap::Error, args: &[String]) -> String {
    let commands = commands();
    // A command comes first (`graceexec reload --name api`); after one,
    // clap's words are right (`graceexec events extra`).
    let in_command = args.first().is_some_and(|a| commands.contains(a));
    if e.kind() == ErrorKind::UnknownArgument && !in_command {
        if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
            if !arg.starts_with('-') {
                return bare_word(arg, &commands);
            }
        }
    }
    one_line(&e.render().to_string())
}

/// A word where an option or a command was expected: a command after
/// options, a misspelt command, or the server's command line without `--`
/// before it.
fn bare_word(arg: &str, commands: &[String]) -> String {
    if commands.iter().any(|c| c == arg) {
        return format!(
            "'{arg}' must come first, its options after it: graceexec {arg} [OPTIONS]; \
             see 'graceexec {arg} --help'"
        );
    }
    if let Some(near) = commands.iter().find(|c| distance(arg, c) <= 2) {
        return format!("unknown command '{arg}'; did you mean '{near}'? see 'graceexec --help'");
    }
    format!(
        "'{arg}' is not an option of graceexec; put `--` before the server command: \
         graceexec --listen ADDR -- COMMAND [ARGS]"
    )
}

/// Levenshtein distance, for short words.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// clap's message and tip, without the usage block.
pub fn one_line(rendered: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut continues = false;
    for raw in rendered.lines() {
        let line = raw.trim();
        if let Some(msg) = line.strip_prefix("error: ") {
            parts.push(msg.to_string());
            continues = msg.ends_with(':');
        } else if let Some(tip) = line.strip_prefix("tip: ") {
            // "to pass '--listne' as a value, use '-- --listne'" is clap's
            // advice for a program with positional values: here it would
            // make the typo the server's command.
            if !tip.starts_with("to pass ") {
                parts.push(tip.to_string());
            }
            continues = false;
        } else if continues && raw.starts_with(' ') && !line.is_empty() {
            // "the following required arguments were not provided:" lists
            // them on indented lines below.
            if let Some(last) = parts.last_mut() {
                last.push(' ');
                last.push_str(line);
            }
        } else {
            continues = false;
        }
    }
    if parts.is_empty() {
        parts.push(rendered.lines().next().unwrap_or("invalid usage").to_string());
    }
    format!("{}; see 'graceexec --help'", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explained(args: &[&str]) -> String {
        use clap::Parser;
        let all = std::iter::once("graceexec").chain(args.iter().copied());
        let e = super::super::Cli::try_parse_from(all).unwrap_err();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        explain_args(&e, &args)
    }

    /// Regression: `events` and `upgrade` were missing from the commands
    /// "did you mean" knew, so `graceexec upgarde` was told to put `--`
    /// before a server command; options before a command got "unknown
    /// command 'reload'; did you mean 'reload'?"; and `graceexec events
    /// extra` the advice about `--`.
    #[test]
    fn every_command_is_known_and_options_before_one_are_explained() {
        for (typo, command) in [("upgarde", "upgrade"), ("evnets", "events"), ("relaod", "reload")]
        {
            let line = explained(&[typo]);
            assert!(line.contains(&format!("did you mean '{command}'?")), "{line}");
        }
        let line = explained(&["--name", "api", "reload"]);
        assert!(line.starts_with("'reload' must come first"), "{line}");
        assert!(line.contains("graceexec reload [OPTIONS]"), "{line}");
        let line = explained(&["events", "extra"]);
        assert!(line.contains("unexpected argument 'extra'") && !line.contains("`--`"), "{line}");
        let line = explained(&["-l", "8080", "python3", "server.py"]);
        assert!(line.contains("put `--` before the server command"), "{line}");
    }

    #[test]
    fn near_words() {
        assert_eq!(distance("relaod", "reload"), 2);
        assert_eq!(distance("stats", "status"), 1);
        assert_eq!(distance("python3", "reload"), 6);
    }
}
