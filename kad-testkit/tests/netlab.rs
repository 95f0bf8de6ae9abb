//! The link emulator on real sockets: two sites 80 ms apart (40 ms each way) with 20% loss
//! each way. Needs root, iproute2 and ethtool (`scripts/test` installs them); without them it
//! fails.
#![cfg(all(feature = "netlab", target_os = "linux"))]

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use kad_testkit::netlab::{LinkShape, Wan};

#[test]
fn netns_datagrams_cross_the_link_late_and_some_are_lost() {
    let shape = LinkShape::new(Duration::from_millis(40)).loss(0.2);
    let tag = format!("nl{}", std::process::id() % 100_000);
    let wan = Wan::up(&tag, [10, 217, 0], shape).expect("root, iproute2 and ethtool");
    let to: SocketAddr = (wan.addr(1), 7000).into();
    let rx = wan
        .in_site(1, || UdpSocket::bind(to).expect("bind in site 1"))
        .unwrap();
    let tx = wan
        .in_site(0, || {
            UdpSocket::bind((wan.addr(0), 0)).expect("bind in site 0")
        })
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    // Round trips: an echo from site 1 back to site 0; the first one also resolves ARP.
    // The echo thread ends on "stop" or after a minute, never on a quiet spell: at 20% loss a
    // run of lost requests leaves it seconds without a datagram now and then.
    let echo = std::thread::spawn({
        let rx = rx.try_clone().unwrap();
        move || {
            let mut buf = [0u8; 64];
            let mut n = 0;
            let end = Instant::now() + Duration::from_secs(60);
            while Instant::now() < end {
                let (len, from) = match rx.recv_from(&mut buf) {
                    Ok(got) => got,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        continue;
                    }
                    Err(e) => panic!("echo socket: {e}"),
                };
                if &buf[..len] == b"stop" {
                    break;
                }
                if buf[0] == b'e' {
                    rx.send_to(&buf[..len], from).unwrap();
                } else {
                    n += 1;
                }
            }
            n
        }
    });
    // Each echo is waited for up to 500 ms; an echo of an earlier round that comes later than
    // that is counted as late and skipped, so it cannot be taken for the next one.
    let (mut rtts, mut late) = (Vec::new(), 0);
    for i in 0..40u32 {
        let want = format!("e{i}");
        let t = Instant::now();
        tx.send_to(want.as_bytes(), to).unwrap();
        let mut buf = [0u8; 64];
        loop {
            let left = Duration::from_millis(500).saturating_sub(t.elapsed());
            if left.is_zero() {
                break;
            }
            tx.set_read_timeout(Some(left)).unwrap();
            match tx.recv_from(&mut buf) {
                Ok((len, _)) if &buf[..len] == want.as_bytes() => {
                    rtts.push(t.elapsed());
                    break;
                }
                Ok(_) => late += 1,
                Err(_) => break,
            }
        }
    }
    rtts.sort();
    assert!(
        rtts.len() >= 15,
        "at 20% each way, most echoes return: {} ({late} late; link {:?})",
        rtts.len(),
        wan.stats()
    );
    assert!(
        rtts.len() <= 35,
        "at 20% each way, some echoes are lost: {}",
        rtts.len()
    );
    assert!(rtts[0] >= Duration::from_millis(79), "{:?}", rtts[0]);
    assert!(
        rtts[rtts.len() / 2] < Duration::from_millis(150),
        "{rtts:?}"
    );

    // A burst of 1,000 one-way datagrams: about 800 arrive.
    for i in 0..1000u32 {
        tx.send_to(format!("d{i}").as_bytes(), to).unwrap();
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    // "stop" may be lost too: send it until the echo thread ends.
    while !echo.is_finished() {
        tx.send_to(b"stop", to).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let arrived = echo.join().unwrap();
    assert!((720..=880).contains(&arrived), "arrived {arrived} of 1000");
    let s = wan.stats();
    assert_eq!(s.forward.overflowed, 0, "{s:?}");
    assert!(s.forward.dropped >= 150, "{s:?}");
    drop(wan);
    assert!(
        !std::path::Path::new(&format!("/var/run/netns/{tag}-r")).exists(),
        "the namespaces are gone"
    );
}
