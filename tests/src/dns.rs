//! A tiny authoritative DNS server for tests: answers A and AAAA queries for the names it is
//! given (with their TTL), NXDOMAIN for the rest, from a thread on a UDP socket a test binds
//! (inside a namespace, so the machine's resolver is never touched). Its answers can be
//! changed while it runs (a dynamic-DNS name moving), or turned off (a resolver that died).

use std::{
    collections::HashMap,
    net::{IpAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

type Zone = Arc<Mutex<HashMap<String, (Vec<IpAddr>, u32)>>>;

pub struct DnsServer {
    zone: Zone,
    silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Serves on `socket` (bound by the caller, e.g. inside a namespace).
    pub fn start(socket: UdpSocket) -> anyhow::Result<DnsServer> {
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let zone: Zone = Default::default();
        let silent = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (z, q, s) = (zone.clone(), silent.clone(), stop.clone());
        let thread = std::thread::spawn(move || serve(socket, z, q, s));
        Ok(DnsServer {
            zone,
            silent,
            stop,
            thread: Some(thread),
        })
    }

    /// `name` now resolves to `addrs`, valid for `ttl` seconds.
    pub fn set(&self, name: &str, addrs: &[IpAddr], ttl: u32) {
        self.zone
            .lock()
            .expect("zone")
            .insert(name.to_ascii_lowercase(), (addrs.to_vec(), ttl));
    }

    /// Stops answering at all (true), or answers again (false).
    pub fn silence(&self, silent: bool) {
        self.silent.store(silent, Ordering::Relaxed);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: UdpSocket, zone: Zone, silent: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if silent.load(Ordering::Relaxed) {
            continue;
        }
        if let Some(answer) = answer(&buf[..n], &zone) {
            let _ = socket.send_to(&answer, from);
        }
    }
}

/// The answer to one query (one question, no compression in it).
fn answer(q: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    if q.len() < 17 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*q.get(at)?, *q.get(at + 1)?]);
    let question_end = at + 4;
    let name = labels.join(".");
    let found = zone.lock().ok()?.get(&name).cloned();
    let mut a = q.get(..question_end)?.to_vec();
    a[2] = 0x85; // a response, authoritative, recursion desired copied
    a[3] = 0x80;
    a[6] = 0;
    a[7] = 0;
    let Some((addrs, ttl)) = found else {
        a[3] |= 3; // NXDOMAIN
        return Some(a);
    };
    let mut count = 0u16;
    for ip in addrs {
        let (t, data): (u16, Vec<u8>) = match ip {
            IpAddr::V4(v4) if qtype == 1 => (1, v4.octets().to_vec()),
            IpAddr::V6(v6) if qtype == 28 => (28, v6.octets().to_vec()),
            _ => continue,
        };
        a.extend_from_slice(&[0xc0, 12]);
        a.extend_from_slice(&t.to_be_bytes());
        a.extend_from_slice(&[0, 1]);
        a.extend_from_slice(&ttl.to_be_bytes());
        a.extend_from_slice(&(data.len() as u16).to_be_bytes());
        a.extend_from_slice(&data);
        count += 1;
    }
    a[6..8].copy_from_slice(&count.to_be_bytes());
    Some(a)
}
