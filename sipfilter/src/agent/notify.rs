//! Telling systemd how the agent is doing (`Type=notify`): the sd_notify protocol is one
//! datagram to the socket named by `$NOTIFY_SOCKET`, so no crate is needed for it.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) when systemd asked for notifications; silently nothing
/// otherwise (run by hand, or under another supervisor).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (what systemd uses).
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| socket.send_to_addr(state.as_bytes(), &a))
    } else {
        socket.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = sent {
        eprintln!("sipfilter: warning: cannot notify systemd ({e})");
    }
}
