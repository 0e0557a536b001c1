//! End to end over a veth pair between two namespaces this test creates: a UDP flood of
//! REGISTERs from one address is cut off at the receiving interface, in XDP, while a second
//! address's REGISTERs still reach a listening socket.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use aya::programs::XdpMode;
use sipfilter::addr::source_key;
use sipfilter_common::{KernelConfig, Outcome};
use sipfilter_tests::{
    harness::TestFilter,
    netns::{veth_pair, Netns},
    packet::sip_request,
};

#[test]
fn register_flood_is_cut_off_at_the_interface_while_a_phone_gets_through() -> anyhow::Result<()> {
    let pbx = Netns::new("pbx")?;
    let lan = Netns::new("lan")?;
    let (_lan_if, pbx_if) = veth_pair(&lan, &["10.200.0.2/24", "10.200.0.3/24"], &pbx, &["10.200.0.1/24"])?;

    let mut filter = TestFilter::with_config(&KernelConfig::default())?;
    let burst = KernelConfig::default().limits[0].burst as usize;

    let (listener, _link) = {
        let _inside = pbx.enter()?;
        let link = filter.loaded.program_mut()?.attach(&pbx_if, XdpMode::Default)?;
        let listener = UdpSocket::bind("10.200.0.1:5060")?;
        (listener, link)
    };
    listener.set_read_timeout(Some(Duration::from_millis(300)))?;
    // Room for everything that passes (the burst and the phone's) even when the reader runs
    // slowly (in the kernel-test VM, emulated): the count is then the filter's, not the
    // socket buffer's.
    grow_receive_buffer(&listener, 8 << 20)?;
    let (attacker, phone) = {
        let _inside = lan.enter()?;
        (UdpSocket::bind("10.200.0.2:5060")?, UdpSocket::bind("10.200.0.3:5060")?)
    };
    let pbx_addr: SocketAddr = "10.200.0.1:5060".parse()?;
    // Resolve ARP first (a datagram to the discard port, which is not SIP and passes) so no
    // REGISTER waits in, or is dropped from, the neighbour queue.
    attacker.send_to(b"warm-up", "10.200.0.1:9")?;
    std::thread::sleep(Duration::from_millis(200));

    // Read while the flood runs: the socket buffer holds fewer datagrams than a burst.
    let reader = std::thread::spawn(move || {
        let mut received: HashMap<SocketAddr, usize> = HashMap::new();
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = listener.recv_from(&mut buf) {
            *received.entry(from).or_default() += 1;
        }
        received
    });

    const FLOOD: usize = 3000;
    const PHONE: usize = 30;
    let flood = sip_request("REGISTER", "1000");
    let start = std::time::Instant::now();
    for i in 0..FLOOD {
        // Paced at roughly 20,000/s: faster, and the veth ring (256 frames) overflows
        // before XDP sees the frames, which would test the ring rather than the filter.
        if i % 20 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        attacker.send_to(&flood, pbx_addr)?;
        if i % (FLOOD / PHONE) == 0 {
            phone.send_to(&sip_request("REGISTER", &format!("2{i:04}")), pbx_addr)?;
        }
    }

    let sending = start.elapsed();
    let received = reader.join().expect("reader thread");
    let from_attacker = received.get(&"10.200.0.2:5060".parse()?).copied().unwrap_or(0);
    let from_phone = received.get(&"10.200.0.3:5060".parse()?).copied().unwrap_or(0);

    assert_eq!(from_phone, PHONE, "every phone REGISTER arrives");
    // The burst, and what the bucket refilled while it was sent: nothing at this machine's
    // speed, a token or two in the emulated kernel-test VM.
    let rate = KernelConfig::default().limits[0].rate_per_sec as f64;
    let refilled = (rate * sending.as_secs_f64()).ceil() as usize;
    assert!(
        (burst..=burst + refilled).contains(&from_attacker),
        "the flood is cut off after its burst: {from_attacker} passed (burst {burst}, {refilled} refilled in {sending:?})"
    );
    let key = source_key("10.200.0.2".parse()?, 64);
    assert!(filter.maps().ban(&key)?.is_some(), "the flooding address is banned");
    let events = filter.ban_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].source, key);
    let c = filter.counters()?;
    assert_eq!(c.outcome(Outcome::RateRegister), 1);
    assert_eq!(c.outcome(Outcome::Banned) as usize, FLOOD - from_attacker - 1);
    Ok(())
}

/// SO_RCVBUFFORCE (root): past net.core.rmem_max.
fn grow_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    anyhow::ensure!(rc == 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    Ok(())
}
