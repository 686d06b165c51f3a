//! Sockets of an earlier run, back from the service manager's file
//! descriptor store (fdstore.rs): whether one still fits a `--listen`
//! address, and taking it back as a listener.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{getsockopt, sockopt, SockType};

use super::{default_name, local_inet, Addr, Listener, Spec};

/// Whether a stored socket (fdstore.rs) can serve `addr`: the same
/// type, bound to the same address, or the same IP where the port was 0.
/// Its address if so.
pub fn fits(addr: &Addr, fd: BorrowedFd<'_>) -> std::result::Result<SocketAddr, String> {
    let (want, ty) = match addr {
        Addr::Tcp(a) => (a, SockType::Stream),
        Addr::Udp(a) => (a, SockType::Datagram),
        _ => return Err("only TCP and UDP sockets are stored".into()),
    };
    let local = local_inet(&fd).ok_or("it is not an internet socket")?;
    let same_port = want.port() == 0 || want.port() == local.port();
    let same_type = getsockopt(&fd, sockopt::SockType).is_ok_and(|t| t == ty);
    if local.ip() != want.ip() || !same_port || !same_type {
        return Err(format!("it is bound to {local}"));
    }
    Ok(local)
}

/// A TCP or UDP socket taken back from the file descriptor store
/// (fdstore.rs) for `spec`, if it still fits.
pub fn take_stored(spec: &Spec, fd: OwnedFd) -> std::result::Result<Listener, String> {
    let local = fits(&spec.addr, fd.as_fd())?;
    let shown = match spec.addr {
        Addr::Tcp(_) => Addr::Tcp(local),
        _ => Addr::Udp(local),
    };
    let name = spec.name.clone().unwrap_or_else(|| default_name(&shown));
    Ok(Listener { name, fd, shown: shown.to_string(), _created: None })
}
