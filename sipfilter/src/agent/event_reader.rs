//! Where the programs' ring buffers are read: a thread per ring buffer that waits on it and
//! hands every record to the agent's loop through an unbounded channel. The loop may be busy
//! for a while (saving a state file of 100,000 bans); the ring buffer must not wait for it: at
//! 80,000 bans a second a 256 KiB ring buffer fills in 25 ms, and a ban event it has no room
//! for is lost (`cargo xtask bench --agent` lost thousands before this reader).

use std::os::fd::AsRawFd as _;

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// A ring buffer moved to its reader thread: only that thread touches it from then on.
struct Owned(RingBuf<MapData>);

// SAFETY: the ring buffer (its fd and its mappings) is used by one thread at a time: it is
// created on the agent's thread and moved, never shared, to the reader thread.
unsafe impl Send for Owned {}

/// Starts a thread that decodes every record of `ring` with `decode` and sends it; the
/// receiver gets them in order. The thread ends when the receiver is dropped.
pub fn spawn<T: Send + 'static>(
    name: &str,
    ring: RingBuf<MapData>,
    decode: fn(&[u8]) -> Option<T>,
) -> anyhow::Result<UnboundedReceiver<T>> {
    let (tx, rx) = unbounded_channel();
    let ring = Owned(ring);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || read_forever(ring, tx, decode))?;
    Ok(rx)
}

fn read_forever<T>(mut ring: Owned, tx: UnboundedSender<T>, decode: fn(&[u8]) -> Option<T>) {
    let fd = ring.0.as_raw_fd();
    loop {
        while let Some(item) = ring.0.next() {
            if let Some(e) = decode(&item) {
                if tx.send(e).is_err() {
                    return;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. A second's timeout, so the thread notices the agent
        // stopping even when no event comes.
        unsafe { libc::poll(&mut p, 1, 1000) };
    }
}
