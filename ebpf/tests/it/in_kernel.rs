//! What the kernel does without userspace's help: sockets joining the sockhash at accept (the
//! sock_ops program), two classifiers side by side, detaching on drop, and passthrough pairs
//! moving bytes between two sockets. Root required, as for `classifier`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use replink_ebpf::{program_loaded, socket_cookie, Classifier, Reason};

use crate::corpus;

fn load() -> Classifier {
    Classifier::load(&corpus::routes()).unwrap_or_else(|e| panic!("loading the classifier: {e:#?}"))
}

/// A classifier and a loopback listener registered with it.
fn load_with_listener() -> (Classifier, TcpListener) {
    let mut classifier = load();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    classifier
        .listen_on(listener.local_addr().unwrap())
        .unwrap();
    (classifier, listener)
}

/// Polls for the classification of `cookie`: the verdict runs as the bytes arrive.
fn classified(c: &Classifier, cookie: u64) -> Option<Reason> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(class) = c.classification(cookie).unwrap() {
            return Some(class.reason);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The client sends its ClientHello before the server accepts (what real clients do): the
/// socket joined the sockhash at the end of the handshake, so the kernel saw it anyway.
#[test]
fn accepted_sockets_join_in_the_kernel_before_userspace_accepts() {
    let (classifier, listener) = load_with_listener();
    let hello = corpus::case("routed-rustls-exact").bytes;
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.write_all(&hello).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let (mut server, _) = listener.accept().unwrap();
    let cookie = classifier.accepted(&server).unwrap().expect("joined");
    assert_eq!(classified(&classifier, cookie), Some(Reason::Routed));
    let got = read_n(&mut server, hello.len());
    assert!(got == hello);

    // A listener that is not registered: its sockets stay out.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let _c = TcpStream::connect(other.local_addr().unwrap()).unwrap();
    let (s, _) = other.accept().unwrap();
    assert_eq!(classifier.accepted(&s).unwrap(), None, "not joined");
}

/// Reads `n` bytes, retrying on EAGAIN. Kernel finding: until the stream parser has taken the
/// bytes queued before `accept` (it runs from a work queue after `Classifier::accepted`), a
/// read on the socket says EAGAIN even on a blocking socket, and runs the parser once more,
/// which can corrupt the socket's read offset (see `kernel_first` in the proxy's `conn.rs`):
/// the tests wait for the classification before they read, as the proxy does.
fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = vec![0; n];
    let mut at = 0;
    while at < n {
        match s.read(&mut got[at..]) {
            Ok(0) => panic!("end of stream after {at} of {n} bytes"),
            Ok(k) => at += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("after {at} of {n} bytes: {e}"),
        }
    }
    got
}

/// One read into a big buffer (as the proxy reads), retrying on EAGAIN.
fn read_big(s: &mut TcpStream) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = vec![0; 16 * 1024 + 512];
    loop {
        match s.read(&mut got) {
            Ok(k) => {
                got.truncate(k);
                return got;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Connects, sends a ClientHello, accepts, reads it: (client, cookie of the accepted socket,
/// accepted socket).
fn accept_with_hello(classifier: &Classifier, l: &TcpListener) -> (TcpStream, u64, TcpStream) {
    let hello = corpus::case("routed-rustls-exact").bytes;
    let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    c.write_all(&hello).unwrap();
    let (mut s, _) = l.accept().unwrap();
    let cookie = classifier.accepted(&s).unwrap().expect("joined");
    classified(classifier, cookie);
    read_n(&mut s, hello.len());
    (c, cookie, s)
}

/// Two classifiers (two replink processes) on the same cgroup: each takes only the sockets of
/// its own listener, and dropping one detaches its sock_ops program while the other works on.
#[test]
fn two_classifiers_do_not_interfere_and_drop_detaches() {
    let mut a = load();
    let mut b = load();
    let la = TcpListener::bind("127.0.0.1:0").unwrap();
    let lb = TcpListener::bind("127.0.0.1:0").unwrap();
    a.listen_on(la.local_addr().unwrap()).unwrap();
    b.listen_on(lb.local_addr().unwrap()).unwrap();
    let (_c1, ka, _s1) = accept_with_hello(&a, &la);
    let (_c2, kb, _s2) = accept_with_hello(&b, &lb);
    assert_eq!(classified(&a, ka), Some(Reason::Routed));
    assert_eq!(classified(&b, kb), Some(Reason::Routed));
    assert_eq!(a.classification(kb).unwrap(), None);
    assert_eq!(b.classification(ka).unwrap(), None);

    let id = a.sock_ops_id();
    assert!(program_loaded(id));
    drop(a);
    assert!(
        !program_loaded(id),
        "sock_ops program {id} still loaded after drop"
    );
    let (_c3, kb2, _s3) = accept_with_hello(&b, &lb);
    assert_eq!(classified(&b, kb2), Some(Reason::Routed));
}

/// A passthrough pair: after the ClientHello (read by userspace), bytes go both ways between
/// the client and the upstream in the kernel, byte for byte, and are counted; FIN is not
/// carried (userspace passes it on).
#[test]
fn paired_sockets_exchange_bytes_in_the_kernel() {
    let mut classifier = load();
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let back = TcpListener::bind("127.0.0.1:0").unwrap();
    classifier.listen_on(front.local_addr().unwrap()).unwrap();
    let hello = corpus::case("routed-rustls-exact").bytes;
    let mut client = TcpStream::connect(front.local_addr().unwrap()).unwrap();
    client.write_all(&hello).unwrap();
    let (mut accepted, _) = front.accept().unwrap();
    let client_cookie = classifier.accepted(&accepted).unwrap().expect("joined");
    accepted
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(classified(&classifier, client_cookie), Some(Reason::Routed));
    let got = read_n(&mut accepted, hello.len());

    let mut to_upstream = TcpStream::connect(back.local_addr().unwrap()).unwrap();
    let (mut upstream, _) = back.accept().unwrap();
    let up_cookie = socket_cookie(&to_upstream).unwrap();
    classifier.pair(client_cookie, up_cookie, 1).unwrap();
    classifier.add_socket(&to_upstream).unwrap();
    to_upstream.write_all(&got).unwrap();

    upstream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut first = vec![0; hello.len()];
    upstream.read_exact(&mut first).unwrap();
    assert!(first == hello);
    let up: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let down: Vec<u8> = (0..500_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let writer = {
        let (mut upstream, down) = (upstream.try_clone().unwrap(), down.clone());
        std::thread::spawn(move || upstream.write_all(&down).unwrap())
    };
    let sender = {
        let (mut client, up) = (client.try_clone().unwrap(), up.clone());
        std::thread::spawn(move || client.write_all(&up).unwrap())
    };
    let mut got_up = vec![0; up.len()];
    upstream.read_exact(&mut got_up).unwrap();
    let mut got_down = vec![0; down.len()];
    client.read_exact(&mut got_down).unwrap();
    writer.join().unwrap();
    sender.join().unwrap();
    assert!(got_up == up, "client -> upstream bytes differ");
    assert!(got_down == down, "upstream -> client bytes differ");

    // The FIN reaches the accepted socket, not the upstream: userspace sees it as EOF.
    client.shutdown(Shutdown::Write).unwrap();
    let mut buf = [0; 16];
    assert_eq!(accepted.read(&mut buf).unwrap(), 0);

    let (n_up, n_down) = classifier.unpair(client_cookie, up_cookie).unwrap();
    assert_eq!((n_up, n_down), (up.len() as u64, down.len() as u64));
    let counters = classifier.counters().unwrap();
    assert_eq!(
        counters.passthrough_bytes.get(&1).copied(),
        Some((up.len() + down.len()) as u64)
    );
    // Unpaired and out of the sockhash: bytes reach the accepted socket again.
    upstream.write_all(b"after").unwrap();
    let mut after = [0; 5];
    to_upstream.read_exact(&mut after).unwrap();
    assert_eq!(&after, b"after");
}

/// Many connections the way the proxy handles them: ClientHello sent before `accept`, read
/// after `accepted` and the classification, socket removed from the map, then the rest of the
/// stream both ways must arrive intact (a TLS client's second flight follows the server's
/// answer).
#[test]
fn after_removal_the_stream_goes_on_intact() {
    let (mut classifier, listener) = load_with_listener();
    let hello = corpus::case("routed-rustls-exact").bytes;
    for i in 0..300u32 {
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(&hello).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let cookie = classifier.accepted(&server).unwrap().expect("joined");
        assert_eq!(
            classified(&classifier, cookie),
            Some(Reason::Routed),
            "connection {i}"
        );
        let got = read_big(&mut server);
        assert!(
            got == hello,
            "connection {i}: ClientHello changed ({} bytes)",
            got.len()
        );
        classifier.remove_socket(cookie).unwrap();
        classifier.forget(cookie).unwrap();
        server.write_all(b"server hello").unwrap();
        let mut answer = [0; 12];
        client.read_exact(&mut answer).unwrap();
        let rest: Vec<u8> = (0..20_000u32).map(|k| (k ^ i) as u8).collect();
        client.write_all(&rest).unwrap();
        let got = read_n(&mut server, rest.len());
        assert!(
            got == rest,
            "connection {i}: stream after the ClientHello changed"
        );
    }
}
