//! The man page doc/graceexec.1: the hand-written roff of
//! doc/graceexec.1.in with each `@...@` line replaced by what the clap
//! definitions say, so that the synopsis, the options and the commands
//! cannot drift from the parser. clap_mangen renders the title, NAME,
//! DESCRIPTION and the option lists; the synopsis and the commands are
//! built here, because clap_mangen's synopsis has no `--` and its
//! subcommand list points to graceexec-reload(1) and other pages that do
//! not exist.

use clap::{Arg, Command, CommandFactory};
use clap_mangen::Man;

use crate::cli::Cli;

const TEMPLATE: &str = include_str!("../../../doc/graceexec.1.in");

/// The page. Panics when the template and the parser disagree: a
/// subcommand without its `@COMMAND name@` line, or a line naming none.
pub fn page() -> String {
    // clap's own `help` subcommand needs no section.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = Man::new(cmd.clone()).manual("User Commands");
    let mut seen = Vec::new();
    let mut out = String::from(
        ".\\\" Generated from doc/graceexec.1.in and the clap definitions by\n\
         .\\\" scripts/generate.sh; edit those, not this file.\n",
    );
    out.push_str(PREAMBLE);
    for line in TEMPLATE.lines() {
        let part = match line {
            l if l.starts_with(".\\\"#") => continue,
            "@TITLE@" => section(|w| man.render_title(w)),
            "@NAME@" => section(|w| man.render_name_section(w)),
            "@SYNOPSIS@" => synopsis(&cmd),
            "@DESCRIPTION@" => section(|w| man.render_description_section(w)),
            "@OPTIONS@" => options(&cmd),
            l if l.starts_with("@COMMAND ") => {
                let name = l.trim_start_matches("@COMMAND ").trim_end_matches('@');
                let sub = visible(&cmd)
                    .find(|s| s.get_name() == name)
                    .unwrap_or_else(|| panic!("graceexec.1.in: no subcommand '{name}'"));
                seen.push(name.to_string());
                subcommand(sub)
            }
            l if l.starts_with('@') => panic!("graceexec.1.in: unknown placeholder {l}"),
            l => format!("{l}\n"),
        };
        out.push_str(&part);
    }
    for sub in visible(&cmd) {
        assert!(
            seen.iter().any(|s| s == sub.get_name()),
            "graceexec.1.in has no @COMMAND {}@ line",
            sub.get_name()
        );
    }
    out
}

/// What the roff crate puts before every piece it renders: the
/// apostrophe string `\*(Aq`. Written once, at the top.
const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

fn section(render: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> String {
    let mut buf = Vec::new();
    render(&mut buf).expect("rendering into memory");
    let text = String::from_utf8(buf).expect("clap_mangen writes UTF-8");
    code(text.strip_prefix(PREAMBLE).unwrap_or(&text))
}

fn visible(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// A subcommand without -h/--help, which every one has and the main
/// list already describes. Hidden rather than removed: it is built.
fn own_args(cmd: &Command) -> Command {
    let own = cmd.clone();
    if own.get_arguments().any(|a| a.get_id() == "help") {
        own.mut_arg("help", |a| a.hide(true))
    } else {
        own
    }
}

/// The OPTIONS section. Help headings (`#[arg(help_heading = ...)]`),
/// which clap_mangen makes sections of their own, become subsections.
fn options(cmd: &Command) -> String {
    let headings: Vec<&str> = cmd.get_arguments().filter_map(Arg::get_help_heading).collect();
    let text = section(|w| Man::new(cmd.clone()).render_options_section(w));
    let mut out = String::from(".SH OPTIONS\n");
    for line in text.lines() {
        if let Some(h) = line.strip_prefix(".SH ") {
            if h != "OPTIONS" {
                let name = headings.iter().find(|x| x.to_uppercase() == h).unwrap_or(&h);
                out.push_str(&format!(".SS \"{}\"\n", esc(name)));
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// One synopsis per form: the run form with `--`, then each command.
fn synopsis(cmd: &Command) -> String {
    let mut out = String::from(
        ".SY graceexec\n[\\fIOPTIONS\\fR]\n\\fB\\-\\-\\fR\n\\fICOMMAND\\fR\n[\\fIARGS\\fR]...\n.YS\n",
    );
    for sub in visible(cmd) {
        out.push_str(&usage(sub));
    }
    out
}

/// `graceexec reload [--name NAME | --control PATH] [--timeout DURATION]...`
fn usage(sub: &Command) -> String {
    let mut out = format!(".SY \"graceexec {}\"\n", sub.get_name());
    let args: Vec<&Arg> = sub.get_arguments().filter(|a| !hidden(a)).collect();
    let mut done: Vec<&str> = Vec::new();
    for arg in &args {
        if done.contains(&arg.get_id().as_str()) {
            continue;
        }
        // Mutually exclusive options share one pair of brackets; clap
        // records a conflict on one side only (`conflicts_with` on one).
        let mut group = vec![*arg];
        for other in &args {
            let exclusive = sub.get_arg_conflicts_with(arg).contains(other)
                || sub.get_arg_conflicts_with(other).contains(arg);
            if exclusive && !done.contains(&other.get_id().as_str()) {
                group.push(other);
            }
        }
        done.extend(group.iter().map(|a| a.get_id().as_str()));
        let forms: Vec<String> = group.iter().map(|a| form(a)).collect();
        let forms = forms.join(" | ");
        if group.len() == 1 && arg.is_required_set() {
            out.push_str(&format!("{forms}\n"));
        } else {
            out.push_str(&format!("[{forms}]\n"));
        }
    }
    out.push_str(".YS\n");
    out
}

fn hidden(arg: &Arg) -> bool {
    arg.is_hide_set() || matches!(arg.get_id().as_str(), "help" | "version")
}

/// `\fB--timeout\fR \fIDURATION\fR`, `\fB--json\fR`, `\fBbash\fR|\fBzsh\fR`.
fn form(arg: &Arg) -> String {
    let value = arg.get_value_names().and_then(|v| v.first()).map(|v| v.to_string());
    if arg.is_positional() {
        let choices: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|p| !p.is_hide_set())
            .map(|p| format!("\\fB{}\\fR", esc(p.get_name())))
            .collect();
        if !choices.is_empty() {
            return choices.join("|");
        }
        let name = value.unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
        return format!("\\fI{}\\fR", esc(&name));
    }
    let flag = match (arg.get_long(), arg.get_short()) {
        (Some(long), _) => format!("\\fB\\-\\-{}\\fR", esc(long)),
        (None, Some(short)) => format!("\\fB\\-{}\\fR", esc(&short.to_string())),
        (None, None) => String::new(),
    };
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    match value {
        Some(v) if takes_value => format!("{flag} \\fI{}\\fR", esc(&v)),
        _ => flag,
    }
}

/// A subsection per command: its synopsis, what it does (the doc comment
/// of its variant), and its options.
fn subcommand(sub: &Command) -> String {
    let mut out = format!(".SS {}\n", esc(sub.get_name()));
    out.push_str(&usage(sub));
    let about = sub.get_long_about().or_else(|| sub.get_about()).map(|s| s.to_string());
    for para in about.unwrap_or_default().split("\n\n") {
        let para = para.trim();
        if !para.is_empty() {
            out.push_str(".PP\n");
            out.push_str(&esc_text(para));
        }
    }
    let own = own_args(sub);
    let text = section(|w| Man::new(own).render_options_section(w));
    for line in text.lines().filter(|l| !l.starts_with(".SH ")) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Roff escapes for a word: a backslash, and `-` as a minus (what a man
/// page's option dashes must be, so they can be searched and pasted).
fn esc(s: &str) -> String {
    s.replace('\\', "\\e").replace('-', "\\-")
}

/// The same for running text, which must also not start a line with a
/// control character.
fn esc_text(s: &str) -> String {
    let text = esc(s);
    let lines = text.lines().map(|l| {
        let l = l.trim();
        if l.starts_with(['.', '\'']) {
            format!("\\&{l}")
        } else {
            l.to_string()
        }
    });
    code(&lines.collect::<Vec<_>>().join("\n"))
}

/// The doc comments write commands in backquotes, as Markdown does; on
/// the page they are bold. A text line with an odd number of them is left
/// alone.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let pieces: Vec<&str> = line.split('`').collect();
        if line.starts_with('.') || pieces.len() % 2 == 0 {
            out.push_str(line);
        } else {
            for (i, piece) in pieces.iter().enumerate() {
                if i % 2 == 1 {
                    out.push_str(&format!("\\fB{piece}\\fR"));
                } else {
                    out.push_str(piece);
                }
            }
        }
        out.push('\n');
    }
    out
}
