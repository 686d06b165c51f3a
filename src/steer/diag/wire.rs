//! sock_diag's messages for TCP, built and read as bytes.
//!
//! The layouts, all in host byte order except where `be` says network
//! order (netlink(7), sock_diag(7); include/uapi/linux/netlink.h,
//! sock_diag.h and inet_diag.h):
//!
//! ```text
//! nlmsghdr (16)          u32 len (this header included), u16 type,
//!                        u16 flags, u32 seq, u32 pid
//! request: type SOCK_DIAG_BY_FAMILY (20), flags NLM_F_REQUEST (1), and
//! NLM_F_DUMP (0x300) for every socket that matches, without it for one:
//! inet_diag_req_v2 (56)  u8 family (AF_INET 2, AF_INET6 10), u8 protocol
//!                        (IPPROTO_TCP 6), u8 ext (0: no extensions), u8 pad,
//!                        u32 states (bit 1 << state), inet_diag_sockid id
//! or, the older form, type TCPDIAG_GETSOCK (18), whose dump is of both
//! families at once (net/ipv4/inet_diag.c, inet_diag_dump_compat: one
//! walk of the hash instead of two), its answers of type 18 too:
//! inet_diag_req (60)     u8 family (ignored by a dump), u8 src_len,
//!                        u8 dst_len, u8 ext, inet_diag_sockid id,
//!                        u32 states, u32 dbs (unused)
//! inet_diag_sockid (48)  be16 sport, be16 dport, be32 src[4], be32 dst[4],
//!                        u32 if, u32 cookie[2]. A dump keeps only sockets
//!                        with the local (sport) or remote (dport) port
//!                        given, if not 0, and ignores the rest. A single
//!                        query looks the 4-tuple up, src being the
//!                        socket's local end (a v4 address in src[0]), and
//!                        checks the cookie unless both words are ~0.
//! rtattr (4)             u16 len (itself included), u16 type: here
//!                        INET_DIAG_REQ_BYTECODE (1), the program after it
//! inet_diag_bc_op (4)    u8 code, u8 yes, u16 no: the test holds, go `yes`
//!                        bytes on, else `no`. S_GE (2) and S_LE (3) compare
//!                        the local port with the `no` of the op after
//!                        them (8 bytes in all); JMP (1) always goes `no`.
//!                        A socket is kept if a jump lands exactly on the
//!                        program's end, dropped if 4 past it.
//! answers: SOCK_DIAG_BY_FAMILY messages, for a dump then NLMSG_DONE (3,
//! payload an int, 0 or minus an errno); or NLMSG_ERROR (2, payload an
//! int, minus an errno, then the request's header). Each message padded
//! to 4 bytes; a datagram holds one or more.
//! inet_diag_msg (72)     u8 family, u8 state, u8 timer, u8 retrans,
//!                        inet_diag_sockid id (4..52), u32 expires, rqueue,
//!                        wqueue, uid, inode (68..72); attributes follow.
//!                        The id's src is the local address.
//! ```

use std::io;
use std::net::{IpAddr, SocketAddr};

use nix::errno::Errno;

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCPDIAG_GETSOCK: u16 = 18;
#[cfg(test)]
pub const REQ_LEN: usize = 56;
const OLD_REQ_LEN: usize = 60;
const MSG_LEN: usize = 72;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_NOCOOKIE: u32 = !0;
pub const BC_JMP: u8 = 1;
pub const BC_S_GE: u8 = 2;
pub const BC_S_LE: u8 = 3;
/// For `dump_request`: both families, in the older form.
pub const BOTH: u8 = 0;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;

/// A program per port costs 20 bytes, and its jumps must fit a u16: past
/// this many ports, the kernel filters by state only and the ports are
/// tested on our side (as they always are, again).
pub const MAX_PROGRAM_PORTS: usize = 1000;

/// One socket of an answer: the fields graceexec reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sock {
    pub state: u8,
    /// The local address.
    pub ip: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub inode: u32,
}

/// What a dump asks for.
#[derive(Debug, Clone, Copy)]
pub struct Filter<'a> {
    pub states: u32,
    /// Exact local and remote ports, 0 for any.
    pub sport: u16,
    pub dport: u16,
    /// Local port in these; None for any.
    pub ports: Option<&'a [u16]>,
}

impl Filter<'_> {
    pub fn keeps(&self, s: &Sock) -> bool {
        self.states & (1 << s.state) != 0
            && (self.sport == 0 || s.sport == self.sport)
            && (self.dport == 0 || s.dport == self.dport)
            && self.ports.map_or(true, |p| p.contains(&s.sport))
    }
}

/// A dump of `family`'s sockets (or, for BOTH, of v4 and v6 sockets)
/// that `filter` keeps.
pub fn dump_request(seq: u32, family: u8, filter: &Filter) -> Vec<u8> {
    let program = match filter.ports {
        Some(ports) if !ports.is_empty() && ports.len() <= MAX_PROGRAM_PORTS => program(ports),
        _ => Vec::new(),
    };
    let flags = NLM_F_REQUEST | NLM_F_DUMP;
    let id = |m: &mut Vec<u8>| {
        m.extend(filter.sport.to_be_bytes());
        m.extend(filter.dport.to_be_bytes());
        m.resize(m.len() + 44, 0); // addresses, interface, cookie
    };
    let mut m = if family == BOTH {
        let mut m = header(seq, TCPDIAG_GETSOCK, flags);
        m.extend([0, 0, 0, 0]);
        id(&mut m);
        m.extend(filter.states.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m
    } else {
        let mut m = header(seq, SOCK_DIAG_BY_FAMILY, flags);
        m.extend([family, IPPROTO_TCP, 0, 0]);
        m.extend(filter.states.to_ne_bytes());
        id(&mut m);
        m
    };
    if !program.is_empty() {
        m.extend((4 + program.len() as u16).to_ne_bytes());
        m.extend(INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        m.extend(program);
    }
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// The one socket whose local end is `local` and remote end `remote`
/// (both of one family), whatever its state.
pub fn exact_request(seq: u32, local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut m = header(seq, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST);
    m.extend([family, IPPROTO_TCP, 0, 0]);
    m.extend((!0u32).to_ne_bytes()); // any state
    m.extend(local.port().to_be_bytes());
    m.extend(remote.port().to_be_bytes());
    for a in [local.ip(), remote.ip()] {
        let at = m.len();
        match a {
            IpAddr::V4(a) => m.extend(a.octets()),
            IpAddr::V6(a) => m.extend(a.octets()),
        }
        m.resize(at + 16, 0);
    }
    m.extend(0u32.to_ne_bytes()); // any interface
    m.extend(INET_DIAG_NOCOOKIE.to_ne_bytes());
    m.extend(INET_DIAG_NOCOOKIE.to_ne_bytes());
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// nlmsghdr, its length left to fill in.
fn header(seq: u32, kind: u16, flags: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + OLD_REQ_LEN);
    m.extend(0u32.to_ne_bytes());
    m.extend(kind.to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes()); // pid: the kernel's own is 0
    m
}

/// A program keeping the sockets whose local port is one of `ports`
/// (not empty): for each, `port >= p`, `port <= p`, then a jump to the
/// end; a failed test goes to the next port's, or, for the last port, 4
/// past the end. (S_EQ would halve it, but came only with Linux 4.16;
/// these ops are as old as inet_diag.) The kernel's audit follows the
/// `yes` jumps, so every `no` must land on an op they reach: they do.
pub fn program(ports: &[u16]) -> Vec<u8> {
    const ONE: usize = 20; // two 8-byte tests and a jump
    let len = ports.len() * ONE - 4; // the last port needs no jump
    let mut p = Vec::with_capacity(len);
    let op = |p: &mut Vec<u8>, code: u8, yes: u8, no: usize| {
        p.extend([code, yes]);
        p.extend((no as u16).to_ne_bytes());
    };
    for (i, &port) in ports.iter().enumerate() {
        let start = p.len();
        let fail = if i + 1 == ports.len() { len + 4 } else { start + ONE };
        op(&mut p, BC_S_GE, 8, fail - start);
        op(&mut p, 0, 0, port.into());
        op(&mut p, BC_S_LE, 8, fail - start - 8);
        op(&mut p, 0, 0, port.into());
        if i + 1 < ports.len() {
            let to_end = len - p.len();
            op(&mut p, BC_JMP, 4, to_end);
        }
    }
    p
}

/// The messages of one datagram, each socket to `f`; true once a dump is
/// done. Messages of another sequence number are not ours: skipped.
pub fn parse(mut buf: &[u8], seq: u32, f: &mut impl FnMut(&Sock)) -> io::Result<bool> {
    while !buf.is_empty() {
        if buf.len() < NLMSG_HDRLEN {
            return Err(invalid("a netlink header cut short"));
        }
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(invalid("a netlink message length out of bounds"));
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let body = &buf[NLMSG_HDRLEN..len];
        if u32_at(buf, 8) == seq {
            match kind {
                NLMSG_DONE | NLMSG_ERROR => {
                    // DONE carries the dump's end status, ERROR a failure
                    // (or 0, an acknowledgement, not asked for here).
                    let status = if body.len() >= 4 { u32_at(body, 0) as i32 } else { 0 };
                    if status < 0 {
                        return Err(io::Error::from_raw_os_error(-status));
                    }
                    if kind == NLMSG_DONE {
                        return Ok(true);
                    }
                }
                SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => f(&sock(body)?),
                _ => {} // NLMSG_NOOP and the like
            }
        }
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    Ok(false)
}

fn sock(m: &[u8]) -> io::Result<Sock> {
    if m.len() < MSG_LEN {
        return Err(invalid("an inet_diag_msg cut short"));
    }
    // The local address: 16 bytes at 8, of which an AF_INET one uses 4.
    let src: [u8; 16] = m[8..24].try_into().expect("16 bytes");
    let ip = match m[0] {
        AF_INET => IpAddr::from([src[0], src[1], src[2], src[3]]),
        _ => IpAddr::from(src),
    };
    Ok(Sock {
        state: m[1],
        ip,
        sport: u16::from_be_bytes([m[4], m[5]]),
        dport: u16::from_be_bytes([m[6], m[7]]),
        inode: u32_at(m, 68),
    })
}

pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

/// Whether `e` is this errno.
pub fn is(e: &io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno as i32)
}

#[cfg(test)]
mod tests;
