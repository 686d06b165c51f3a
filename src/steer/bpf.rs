//! Classic BPF programs for a SO_REUSEPORT group: which socket gets each
//! new connection.
//!
//! The kernel runs the program on every SYN and uses its return value as
//! the index of the socket that gets the connection. An index out of range
//! is not an error: the kernel then hashes over *every* socket of the
//! group, including ones no generation accepts from. So `Program::build`
//! checks every index of the route against the group's size, and the
//! program can only return an index written in the route.
//!
//! A failed packet load ends a classic BPF program with 0. The only loads
//! here read the TCP source port relative to the network header, which is
//! always in a received SYN; and index 0 is a pool socket that the pool
//! never closes.

use std::collections::HashSet;
use std::fmt;

use nix::libc;

/// The address family of the group: the source port sits at a different
/// place in the network header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Where connections that are not probes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Every connection to socket `index`.
    All(u32),
    /// `b_per_million` of a million connections to `b`, the rest to `a`
    /// (a uniform random draw per connection, `ld rand`).
    Share { a: u32, b: u32, b_per_million: u32 },
}

/// A routing table: probe connections (from a known TCP source port) to
/// their socket, everything else by `split`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// (TCP source port, socket index); each port at most once.
    pub probes: Vec<(u16, u32)>,
    pub split: Split,
}

/// Probes per route. Each costs two instructions, and a program has at
/// most BPF_MAXINSNS (4096) of them.
pub const MAX_PROBES: usize = 1024;

const PER_MILLION: u32 = 1_000_000;

/// Why a route cannot become a program. Nothing is attached then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// An index the group does not have: the kernel would hash the
    /// connection over all sockets instead.
    Index {
        index: u32,
        sockets: u32,
    },
    /// `b_per_million` above 1,000,000.
    Share(u32),
    /// The same source port twice.
    DuplicateProbe(u16),
    TooManyProbes(usize),
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::Index { index, sockets } => {
                write!(f, "route names socket {index} of a group of {sockets}")
            }
            RouteError::Share(n) => write!(f, "share of {n} per million is above 100%"),
            RouteError::DuplicateProbe(p) => write!(f, "probe port {p} routed twice"),
            RouteError::TooManyProbes(n) => write!(f, "{n} probes, at most {MAX_PROBES}"),
        }
    }
}

impl std::error::Error for RouteError {}

impl Route {
    /// Every connection to `index`, no probes.
    pub fn all(index: u32) -> Route {
        Route { probes: Vec::new(), split: Split::All(index) }
    }

    /// Every index the program may return.
    pub fn indexes(&self) -> impl Iterator<Item = u32> + '_ {
        let split = match self.split {
            Split::All(k) => [k, k],
            Split::Share { a, b, .. } => [a, b],
        };
        self.probes.iter().map(|&(_, i)| i).chain(split)
    }
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

// Opcodes, from linux/bpf_common.h; the only ones this module emits.
pub(super) const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
pub(super) const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
pub(super) const LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
pub(super) const LD_H_IND: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_IND) as u16;
pub(super) const LDX_B_MSH: u16 = (libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH) as u16;
pub(super) const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
pub(super) const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;

/// `ld rand`: a uniform u32 per run.
pub(super) const RANDOM: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32;
/// Loads relative to the network header: the data the program sees starts
/// after the TCP header, but SKF_NET_OFF reaches back to the IP header.
pub(super) const NET: u32 = libc::SKF_NET_OFF as u32;
/// The TCP header right after a fixed IPv6 header (loopback has no
/// extension headers; with one, the port read is wrong, which only fails
/// to match a probe and never yields an index outside the route).
pub(super) const NET_V6_SPORT: u32 = (libc::SKF_NET_OFF + 40) as u32;

fn op(code: u16, k: u32) -> Insn {
    Insn { code, jt: 0, jf: 0, k }
}

/// A program checked against its group's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    insns: Vec<Insn>,
}

impl Program {
    /// The program for `route` in a group of `sockets` sockets.
    ///
    /// Probes come first as `jeq #port` each followed by its own `ret`, so
    /// every jump offset is 0 or 1 however long the list (jt/jf are u8).
    pub fn build(route: &Route, family: Family, sockets: u32) -> Result<Program, RouteError> {
        if route.probes.len() > MAX_PROBES {
            return Err(RouteError::TooManyProbes(route.probes.len()));
        }
        if let Some(index) = route.indexes().find(|&i| i >= sockets) {
            return Err(RouteError::Index { index, sockets });
        }
        let mut seen = HashSet::with_capacity(route.probes.len());
        if let Some(&(port, _)) = route.probes.iter().find(|(p, _)| !seen.insert(*p)) {
            return Err(RouteError::DuplicateProbe(port));
        }
        let mut insns = Vec::with_capacity(2 * route.probes.len() + 6);
        if !route.probes.is_empty() {
            match family {
                Family::V4 => {
                    // x = 4 * IHL, then the half-word at the TCP header.
                    insns.push(op(LDX_B_MSH, NET));
                    insns.push(op(LD_H_IND, NET));
                }
                Family::V6 => insns.push(op(LD_H_ABS, NET_V6_SPORT)),
            }
            for &(port, index) in &route.probes {
                insns.push(Insn { code: JEQ_K, jt: 0, jf: 1, k: u32::from(port) });
                insns.push(op(RET_K, index));
            }
        }
        match route.split {
            Split::Share { b_per_million, .. } if b_per_million > PER_MILLION => {
                return Err(RouteError::Share(b_per_million));
            }
            Split::All(k) => insns.push(op(RET_K, k)),
            Split::Share { a, b_per_million: 0, .. } => insns.push(op(RET_K, a)),
            Split::Share { b, b_per_million: PER_MILLION, .. } => insns.push(op(RET_K, b)),
            Split::Share { a, b, .. } if a == b => insns.push(op(RET_K, a)),
            Split::Share { a, b, b_per_million } => {
                insns.push(op(LD_W_ABS, RANDOM));
                // rand >= threshold: a, below it: b.
                insns.push(Insn { code: JGE_K, jt: 1, jf: 0, k: threshold(b_per_million) });
                insns.push(op(RET_K, b));
                insns.push(op(RET_K, a));
            }
        }
        Ok(Program { insns })
    }

    #[cfg(test)]
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// The kernel's form, for SO_ATTACH_REUSEPORT_CBPF.
    pub fn to_filters(&self) -> Vec<libc::sock_filter> {
        self.insns
            .iter()
            .map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k })
            .collect()
    }

    #[cfg(test)]
    pub(super) fn from_insns(insns: Vec<Insn>) -> Program {
        Program { insns }
    }
}

/// The `ld rand` value below which a connection goes to `b`: the nearest
/// to `n / 1e6` of 2^32. Only for 0 < n < 1e6, where it lies within
/// [4295, 2^32 - 4295] and so fits a u32.
fn threshold(b_per_million: u32) -> u32 {
    let scaled = (u64::from(b_per_million) << 32) + u64::from(PER_MILLION / 2);
    (scaled / u64::from(PER_MILLION)) as u32
}

#[cfg(test)]
mod tests;
