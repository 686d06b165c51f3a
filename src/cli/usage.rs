//! Usage errors as one line that says what to do: clap's message, minus
//! its usage block, with better advice for the common mistakes (a server
//! command without `--` before it, a misspelt command).

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// The commands, for "did you mean".
const COMMANDS: [&str; 8] =
    ["reload", "promote", "rollback", "status", "stop", "list", "completions", "help"];

pub fn explain(e: &clap::Error) -> String {
    // After a command (`graceexec reload extra`), clap's words are right.
    let command = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let in_command = command.is_some_and(|c| COMMANDS.contains(&c.as_str()));
    if e.kind() == ErrorKind::UnknownArgument && !in_command {
        if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
            if !arg.starts_with('-') {
                return bare_word(arg);
            }
        }
    }
    one_line(&e.render().to_string())
}

/// A word where an option or a command was expected: a misspelt command,
/// or the server's command line without `--` before it.
fn bare_word(arg: &str) -> String {
    if let Some(near) = COMMANDS.iter().find(|c| distance(arg, c) <= 2) {
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

    #[test]
    fn near_words() {
        assert_eq!(distance("relaod", "reload"), 2);
        assert_eq!(distance("stats", "status"), 1);
        assert_eq!(distance("python3", "reload"), 6);
    }
}
