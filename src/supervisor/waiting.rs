//! Why a candidate is not ready yet, in words: for `status`, the periodic
//! "not ready after" line, and the failure message with what to check.
//!
//! The facts come from the loop (the probe's last result, and for a
//! candidate that accepts nothing, what a look at its processes found); the
//! supervisor only words them.

use std::net::SocketAddr;

/// Why a candidate is not ready yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// The last probe attempt's failure: `connection refused`, `HTTP
    /// status 404`...
    Probe(String),
    /// The probe connection to the socket at this fd is still queued.
    /// `suspect`: what the candidate's processes probably do instead, once
    /// a look at them found something.
    NotAccepted { fd: usize, suspect: Option<Suspect> },
}

/// What a candidate that accepts nothing on its socket probably does
/// instead, from a look at its processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Suspect {
    /// A process of its group holds a TCP socket listening on this
    /// address, one graceexec did not give it: it binds a port itself.
    OwnPort(SocketAddr),
    /// Its main process is this shell, and has a child: a wrapper script
    /// that runs the server without `exec`, so the server's pid is not
    /// LISTEN_PID. `listens`: where its group listens itself, if anywhere
    /// (a server that falls back to binding when the fds are not its own).
    Wrapper { shell: String, listens: Option<SocketAddr> },
}

impl Waiting {
    /// What to check, when the reason points at a common mistake. A look
    /// sees what the processes hold, not what they are for: a server still
    /// starting that also listens on a metrics port, or a start script
    /// still running its set-up commands before it `exec`s the server,
    /// looks the same. So the suspect is "probably" the cause, and the fix
    /// says when it applies.
    fn hint(&self) -> Option<String> {
        let Waiting::NotAccepted { fd, suspect } = self else { return None };
        Some(match suspect {
            None => format!("it never accepted on fd {fd}: does it read LISTEN_FDS?"),
            Some(Suspect::OwnPort(addr)) => format!(
                "it listens on {addr} itself, probably instead: if that is the server's port, \
                 make it accept on the inherited fd {fd} (LISTEN_FDS) instead of binding"
            ),
            Some(Suspect::Wrapper { listens, .. }) => {
                let exec = "COMMAND is probably a shell script that runs the server as a child: \
                            put `exec` before the server's command";
                match listens {
                    None => exec.into(),
                    Some(addr) => format!(
                        "{exec}, and if {addr} is the server's port, make it accept on the \
                         inherited fd {fd} (LISTEN_FDS) instead of binding it"
                    ),
                }
            }
        })
    }

    /// The end of a "was not ready within ..." failure: the reason, then
    /// what to check. The hint says what the suspect is, so the reason
    /// leaves it out.
    pub fn failure(&self) -> String {
        match (self, self.hint()) {
            (Waiting::NotAccepted { fd, .. }, Some(hint)) => {
                format!("(nothing accepted on fd {fd} yet); {hint}")
            }
            (w, _) => format!("({w})"),
        }
    }
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::Probe(why) => write!(f, "last probe: {why}"),
            Waiting::NotAccepted { fd, suspect } => {
                write!(f, "nothing accepted on fd {fd} yet")?;
                match suspect {
                    Some(s) => write!(f, "; {s}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::fmt::Display for Suspect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Suspect::OwnPort(addr) => write!(f, "it listens on {addr} itself, probably instead"),
            Suspect::Wrapper { shell, listens } => {
                write!(
                    f,
                    "its main process is a shell ({shell}) running a child, probably the server"
                )?;
                match listens {
                    Some(addr) => write!(f, ", and it listens on {addr} itself"),
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_accepted(suspect: Option<Suspect>) -> Waiting {
        Waiting::NotAccepted { fd: 3, suspect }
    }

    #[test]
    fn each_suspect_has_its_words_and_its_fix() {
        let addr: SocketAddr = "127.0.0.1:8090".parse().unwrap();
        let own = not_accepted(Some(Suspect::OwnPort(addr)));
        assert_eq!(
            own.to_string(),
            "nothing accepted on fd 3 yet; it listens on 127.0.0.1:8090 itself, probably instead"
        );
        assert_eq!(
            own.failure(),
            "(nothing accepted on fd 3 yet); it listens on 127.0.0.1:8090 itself, probably \
             instead: if that is the server's port, make it accept on the inherited fd 3 \
             (LISTEN_FDS) instead of binding"
        );

        let wrapper =
            |listens| not_accepted(Some(Suspect::Wrapper { shell: "dash".into(), listens }));
        assert_eq!(
            wrapper(None).to_string(),
            "nothing accepted on fd 3 yet; its main process is a shell (dash) running a child, \
             probably the server"
        );
        assert_eq!(
            wrapper(Some(addr)).to_string(),
            "nothing accepted on fd 3 yet; its main process is a shell (dash) running a child, \
             probably the server, and it listens on 127.0.0.1:8090 itself"
        );
        let exec = "(nothing accepted on fd 3 yet); COMMAND is probably a shell script that runs \
                    the server as a child: put `exec` before the server's command";
        assert_eq!(wrapper(None).failure(), exec);
        // Whether it binds only because LISTEN_PID is not its own, or
        // always, cannot be told: both fixes.
        assert_eq!(
            wrapper(Some(addr)).failure(),
            format!(
                "{exec}, and if 127.0.0.1:8090 is the server's port, make it accept on the \
                 inherited fd 3 (LISTEN_FDS) instead of binding it"
            )
        );

        let none = Waiting::NotAccepted { fd: 4, suspect: None };
        assert_eq!(none.to_string(), "nothing accepted on fd 4 yet");
        assert_eq!(
            none.failure(),
            "(nothing accepted on fd 4 yet); it never accepted on fd 4: does it read LISTEN_FDS?"
        );
    }

    #[test]
    fn a_probe_result_has_no_hint() {
        let w = Waiting::Probe("HTTP status 404".into());
        assert_eq!((w.to_string(), w.hint()), ("last probe: HTTP status 404".into(), None));
        assert_eq!(w.failure(), "(last probe: HTTP status 404)");
    }
}
