//! The listening socket: the one address `HOST` names, or every IPv6 and IPv4 address.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;

/// Pending connections the kernel holds for us (what `std` and tokio use).
const BACKLOG: i32 = 1024;

/// Linux's errno for "address family not supported": a kernel booted with `ipv6.disable=1`.
const EAFNOSUPPORT: i32 = 97;

/// Binds `host:port`. Without a host it binds one dual-stack socket on `[::]`, so that
/// IPv6-only and dual-stack clusters reach the pod as IPv4 ones do; where the host has no
/// IPv6 it falls back to `0.0.0.0` and says so.
pub fn bind(host: Option<IpAddr>, port: u16) -> io::Result<TcpListener> {
    if let Some(ip) = host {
        return listen(SocketAddr::new(ip, port), None);
    }
    match listen(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port), Some(false)) {
        Err(err) if err.raw_os_error() == Some(EAFNOSUPPORT) || err.kind() == io::ErrorKind::AddrNotAvailable => {
            tracing::info!("IPv6 is not available on this host ({err}); listening on IPv4 only");
            listen(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port), None)
        }
        other => other,
    }
}

/// A listening socket on `address`; `only_v6` is set explicitly for `[::]`, since the
/// kernel's default (`net.ipv6.bindv6only`) may make it IPv6-only.
fn listen(address: SocketAddr, only_v6: Option<bool>) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    if let Some(only_v6) = only_v6 {
        socket.set_only_v6(only_v6)?;
    }
    // As std and tokio do on Unix: a restarted service can bind while old connections linger.
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answers(address: SocketAddr) -> bool {
        tokio::net::TcpStream::connect(address).await.is_ok()
    }

    #[tokio::test]
    async fn without_a_host_one_socket_takes_ipv4_and_ipv6() {
        let listener = bind(None, 0).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(answers(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await);
        assert!(answers(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await);
    }

    #[tokio::test]
    async fn a_host_binds_that_address_only() {
        let listener = bind(Some(Ipv4Addr::LOCALHOST.into()), 0).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listener.local_addr().unwrap().ip(), IpAddr::from(Ipv4Addr::LOCALHOST));
        assert!(answers(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await);
        assert!(!answers(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await);
    }
}
