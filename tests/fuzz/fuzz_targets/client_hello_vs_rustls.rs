//! Differential: our ClientHello parser against rustls' own (`rustls::server::Acceptor`),
//! which parses the same bytes right after we route them. When both take the ClientHello,
//! they must see the same server name and the same ALPN offer: a router that reads another
//! name than the TLS stack is a confused deputy.
//!
//! Where they may differ (policy, not bugs): we refuse some hellos rustls takes (our name
//! rules, duplicate extensions, two host_name entries, 64 KiB limit) and rustls refuses some
//! we take (it checks more of the message); a host_name that parses as an IPv4 address is a
//! name to us (digits and dots) and no name to rustls.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replink_ebpf::{parse_client_hello, Parse};
use rustls::server::Acceptor;

fuzz_target!(|data: &[u8]| {
    let Ok(Parse::Complete(ours)) = parse_client_hello(data) else {
        return;
    };
    let mut acceptor = Acceptor::default();
    let mut rd = data;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let Ok(Some(accepted)) = acceptor.accept() else {
        return;
    };
    let theirs = accepted.client_hello();
    match (ours.server_name.as_deref(), theirs.server_name()) {
        (Some(a), Some(b)) => assert_eq!(a, b.trim_end_matches('.').to_ascii_lowercase()),
        (None, Some(b)) => panic!("rustls sees server name {b:?}, we see none"),
        // rustls reads a host_name that parses as an IP address as no name.
        (Some(a), None) => assert!(looks_like_ip(a), "we see {a:?}, rustls none"),
        (None, None) => {}
    }
    let their_alpn: Vec<Vec<u8>> = theirs
        .alpn()
        .map(|i| i.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    assert_eq!(ours.alpn, their_alpn);
});

fn looks_like_ip(name: &str) -> bool {
    name.parse::<std::net::Ipv4Addr>().is_ok()
}
