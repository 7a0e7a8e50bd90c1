//! The BPF classifier on real sockets: each corpus ClientHello sent to an accepted socket in
//! the sockhash, whole and split in two writes, must be classified as the userspace parser
//! decides and still arrive byte for byte. Needs root (CAP_BPF, CAP_NET_ADMIN): without it the
//! test fails, it does not skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use replink_ebpf::{Classification, Classifier, Counters, Reason, SniTable};

use crate::corpus;

fn load(routes: &SniTable<u32>) -> Classifier {
    Classifier::load(routes).unwrap_or_else(|e| {
        panic!("loading the classifier (needs clang at build time, root or CAP_BPF + CAP_NET_ADMIN): {e:#?}")
    })
}

/// A classifier with the corpus routes and a loopback listener.
fn setup() -> (Classifier, TcpListener) {
    let classifier = load(&corpus::routes());
    (classifier, TcpListener::bind("127.0.0.1:0").unwrap())
}

/// (reason, route) of a classification.
fn outcome(class: Option<Classification>) -> Option<(Reason, Option<u32>)> {
    class.map(|c| (c.reason, c.route))
}

/// Connects to `listener`, puts the accepted socket under the classifier, sends `bytes` in the
/// given pieces, and returns what the accepted socket read and its classification.
fn send(
    classifier: &mut Classifier,
    listener: &TcpListener,
    pieces: &[&[u8]],
) -> (Vec<u8>, Option<Classification>) {
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let cookie = classifier.add_socket(&server).unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(30)); // a separate segment
        }
        client.write_all(piece).unwrap();
    }
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = vec![0; total];
    let mut n = 0;
    while n < total {
        match server.read(&mut got[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => {
                panic!(
                    "{n} of {total} bytes sent in {} writes reached userspace: {e}",
                    pieces.len()
                )
            }
        }
    }
    let class = classifier.classification(cookie).unwrap();
    classifier.forget(cookie).unwrap();
    (got, class)
}

#[test]
fn the_kernel_classifies_every_corpus_hello_as_the_userspace_parser_does() {
    let routes = corpus::routes();
    let mut classifier = load(&routes);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut expected = Counters::default();
    let mut failures = Vec::new();
    for case in corpus::load() {
        let (reason, route, sni_len) = corpus::oracle(&case, &routes);
        let want = Classification {
            route,
            sni_len,
            reason,
        };
        let half = case.bytes.len() / 2;
        let (a, b) = case.bytes.split_at(half);
        for (how, pieces) in [("whole", vec![&case.bytes[..]]), ("split", vec![a, b])] {
            eprintln!("{} ({how})", case.name);
            let (got, class) = send(&mut classifier, &listener, &pieces);
            assert!(
                got == case.bytes,
                "{} ({how}): bytes changed on the way",
                case.name
            );
            if class != Some(want) {
                failures.push(format!(
                    "{} ({how}): kernel {class:?}, userspace {want:?}",
                    case.name
                ));
            }
            match route {
                Some(id) => *expected.routed.entry(id).or_default() += 1,
                None => *expected.by_reason.entry(reason).or_default() += 1,
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(classifier.counters().unwrap(), expected);
}

#[test]
fn route_updates_apply_to_the_next_connection() {
    let (mut classifier, listener) = setup();
    let hello = corpus::case("routed-rustls-wildcard");
    let (_, class) = send(&mut classifier, &listener, &[&hello.bytes]);
    assert_eq!(outcome(class), Some((Reason::Routed, Some(2))));

    let mut routes = SniTable::new();
    routes
        .insert("redis.repl.test".parse().unwrap(), 7)
        .unwrap();
    classifier.update_routes(&routes).unwrap();
    let (_, class) = send(&mut classifier, &listener, &[&hello.bytes]);
    assert_eq!(outcome(class), Some((Reason::Routed, Some(7))));

    classifier.update_routes(&SniTable::new()).unwrap();
    let (_, class) = send(&mut classifier, &listener, &[&hello.bytes]);
    assert_eq!(outcome(class), Some((Reason::NoRoute, None)));

    let mut too_big = SniTable::new();
    too_big
        .insert("x.test".parse().unwrap(), replink_ebpf::MAX_ROUTES)
        .unwrap();
    assert!(classifier.update_routes(&too_big).is_err());
}

#[test]
fn later_records_keep_the_first_classification_and_pass_intact() {
    let (mut classifier, listener) = setup();
    // The ClientHello followed by application-data records, then a second ClientHello for
    // another name, in separate writes: only the first record classifies.
    let hello = corpus::case("routed-rustls-exact");
    let other = corpus::case("no-route-rustls");
    let data = [0x17, 3, 3, 0, 3, 1, 2, 3];
    let (got, class) = send(
        &mut classifier,
        &listener,
        &[&hello.bytes, &data, &other.bytes],
    );
    let mut want = hello.bytes.clone();
    want.extend_from_slice(&data);
    want.extend_from_slice(&other.bytes);
    assert!(got == want);
    assert_eq!(outcome(class), Some((Reason::Routed, Some(1))));
}

#[test]
fn a_removed_socket_keeps_its_bytes_flowing() {
    let (mut classifier, listener) = setup();
    let hello = &corpus::case("routed-rustls-exact").bytes;
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let cookie = classifier.add_socket(&server).unwrap();
    client.write_all(hello).unwrap();
    let mut got = vec![0; hello.len()];
    server.read_exact(&mut got).unwrap();
    assert!(classifier.classification(cookie).unwrap().is_some());
    classifier.remove_socket(cookie).unwrap();
    client.write_all(b"after").unwrap();
    let mut got = [0; 5];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"after");
    classifier.remove_socket(cookie).unwrap(); // gone already: fine
}

/// The stream parser cannot delimit a second message inside one skb (it sees the skb from its
/// start), so no message ends inside one: a ClientHello with more records behind it, in one
/// write or cut in two, still classifies, and every byte arrives. (With messages of one record
/// each, the second case held back all bytes after the ClientHello.)
#[test]
fn records_coalesced_with_the_client_hello_arrive_intact() {
    let (mut classifier, listener) = setup();
    let mut bytes = corpus::case("routed-rustls-wildcard").bytes;
    for len in [3u8, 10, 20, 7] {
        bytes.extend_from_slice(&[0x17, 3, 3, 0, len]);
        bytes.extend(std::iter::repeat_n(len, len as usize));
    }
    bytes.extend_from_slice(&corpus::case("routed-rustls-exact").bytes);
    let (got, class) = send(&mut classifier, &listener, &[&bytes]);
    assert!(got == bytes);
    assert_eq!(outcome(class), Some((Reason::Routed, Some(2))));
    // The ClientHello cut in two writes, the second with records behind it.
    let pieces: [&[u8]; 2] = [&bytes[..100], &bytes[100..]];
    let (got, class) = send(&mut classifier, &listener, &pieces);
    assert!(got == bytes);
    assert_eq!(outcome(class), Some((Reason::Routed, Some(2))));
    // Then more writes of several records each (cut anywhere).
    let pieces: [&[u8]; 3] = [&bytes, &bytes[100..], &bytes[..7]];
    let (got, _) = send(&mut classifier, &listener, &pieces);
    assert!(got == pieces.concat());
}
