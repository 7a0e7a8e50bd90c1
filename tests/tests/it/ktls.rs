//! `--ktls`: the start-up probe, on this host and in a VM whose kernel has TLS.

use std::net::SocketAddr;
use std::time::Instant;

use replink_tests::*;

/// Whether this host's kernel offers the `tls` ULP, asked the way an operator would: after
/// `modprobe tls` (which fails quietly where there is no module), in `tcp_available_ulp`.
fn host_has_tls_ulp() -> bool {
    let _ = std::process::Command::new("modprobe").arg("tls").output();
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .map(|ulps| ulps.split_whitespace().any(|u| u == "tls"))
        .unwrap_or(false)
}

fn with_ktls(mode: &'static str) -> PairOptions {
    PairOptions {
        workers: 1,
        extra_reverse: strings(&["--ktls", mode]),
        extra_forward: strings(&["--ktls", mode]),
        ..PairOptions::default()
    }
}

/// On a kernel without TLS (this CI host's), `--ktls on` refuses to start either end with
/// the reason and `auto` starts and says `ktls=unavailable`; on a kernel with TLS, both start
/// and say `ktls=available`. `off` does not probe.
#[test]
fn probe_reports_what_the_host_kernel_has() {
    let pki = Pki::new();
    let nowhere = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let p = &pki.files;
    let reverse_args = |mode| {
        reverse_command(
            &pki,
            (&p.server_cert, &p.server_key),
            &[(ROUTE, nowhere)],
            &with_ktls(mode),
        )
    };
    let forward_args = |mode| {
        forward_command(
            &pki,
            (&p.client_cert, &p.client_key),
            nowhere,
            ROUTE,
            &with_ktls(mode),
        )
    };

    if host_has_tls_ulp() {
        for mode in ["on", "auto"] {
            let reverse = ReplinkProcess::spawn(&reverse_args(mode));
            assert_eq!(reverse.count("ktls=available"), 1, "{}", reverse.log());
            let forward = ReplinkProcess::spawn(&forward_args(mode));
            assert_eq!(forward.count("ktls=available"), 1, "{}", forward.log());
        }
    } else {
        let reason = "TCP_ULP tls: No such file or directory \
                      (kernel without CONFIG_TLS or module not loaded)";
        for args in [reverse_args("on"), forward_args("on")] {
            let (_, stderr) = run_replink_expect_failure(&args);
            assert!(
                stderr.contains(&format!(
                    "--ktls on, but kernel TLS is unavailable: {reason}"
                )),
                "{stderr}"
            );
        }
        let reverse = ReplinkProcess::spawn(&reverse_args("auto"));
        let forward = ReplinkProcess::spawn(&forward_args("auto"));
        for end in [&reverse, &forward] {
            let lines = end.lines_matching("ktls=unavailable");
            assert_eq!(lines.len(), 1, "{}", end.log());
            assert!(
                lines[0].contains(&format!("reason=\"{reason}\"")),
                "{}",
                lines[0]
            );
        }
    }
    let off = ReplinkProcess::spawn(&reverse_args("off"));
    assert_eq!(off.count("ktls="), 0, "{}", off.log());
}

/// Shell lines that write the test PKI into the VM's /tmp: `server.pem`, `server.key`,
/// `client.pem`, `client.key` (0600) and `ca.pem`.
fn pki_into_vm(pki: &Pki) -> String {
    let p = &pki.files;
    let files = [
        ("server.pem", &p.server_cert),
        ("server.key", &p.server_key),
        ("client.pem", &p.client_cert),
        ("client.key", &p.client_key),
        ("ca.pem", &p.ca_pem),
    ];
    let mut lines = String::new();
    for (name, path) in files {
        let text = std::fs::read_to_string(path).expect("PKI file");
        lines.push_str(&format!("cat >/tmp/{name} <<'PEM'\n{text}PEM\n"));
    }
    lines.push_str("chmod 600 /tmp/server.key /tmp/client.key\n");
    lines
}

/// In a VM whose kernel has TLS (`scripts/ktls-vm.sh`): after `modprobe tls` the kernel lists
/// the ULP and `/proc/net/tls_stat`, and a static `replink reverse-proxy --ktls on` starts
/// and logs `ktls=available`.
#[test]
fn ktls_on_starts_in_a_vm_with_kernel_tls() {
    let pki = Pki::new();
    let script = format!(
        r#"set -e
modprobe tls
echo "ulps: $(cat /proc/sys/net/ipv4/tcp_available_ulp)"
test -r /proc/net/tls_stat && echo "tls_stat: present"
{pki}
replink reverse-proxy --listen 127.0.0.1:0 --route {ROUTE}=127.0.0.1:9 --workers 1 \
    --cert /tmp/server.pem --key /tmp/server.key --ca /tmp/ca.pem --ktls on \
    >/tmp/replink.log 2>&1 &
pid=$!
i=0
until grep -qs listening /tmp/replink.log || ! kill -0 $pid 2>/dev/null || [ $i -ge 300 ]; do
    sleep 0.2
    i=$((i + 1))
done
echo "--- replink log"
cat /tmp/replink.log
echo "---"
kill $pid
grep -q listening /tmp/replink.log
"#,
        pki = pki_into_vm(&pki),
    );
    let started = Instant::now();
    let run = run_in_ktls_vm(&script, &[static_replink_bin()]);
    let console = strip_ansi(&run.console);
    eprintln!("{console}\nVM run: {:?}", started.elapsed());
    let run = VmRun {
        console,
        exit: run.exit,
    };
    run.assert_ok()
        .assert_says(&["tls_stat: present", "ktls=available", "listening"]);
    let ulps = run
        .console
        .lines()
        .find_map(|l| l.strip_prefix("ulps: "))
        .unwrap_or_default();
    assert!(
        ulps.split_whitespace().any(|u| u == "tls"),
        "{}",
        run.console
    );
    assert!(!run.console.contains("ktls=unavailable"), "{}", run.console);
}

/// A `tls_stat` counter from the VM's console: `label` marks the snapshot (`before`/`after`).
fn tls_stat(console: &str, label: &str, counter: &str) -> u64 {
    let prefix = format!("tls_stat {label} {counter} ");
    console
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} in the console:\n{console}"))
}

const CIPHERS: [(&str, &str); 3] = [
    ("aes128-gcm", "TLS13_AES_128_GCM_SHA256"),
    ("aes256-gcm", "TLS13_AES_256_GCM_SHA384"),
    ("chacha20-poly1305", "TLS13_CHACHA20_POLY1305_SHA256"),
];

/// In the VM whose kernel has TLS (with key updates: Linux 6.13+), separate reverse and
/// forward processes with `--ktls on` carry a 2.6 MiB echo (random and text bytes) for each
/// TLS 1.3 cipher, with zstd and without, byte-exact both ways. `--rekey-after 512KiB` makes
/// both ends send KeyUpdates (update_requested) mid-stream, so each direction changes keys in
/// the kernel several times; a second connection per forward end resumes with the session
/// ticket the first received. (Each connection carries the whole file: a client that
/// half-closes before the server's handshake is done leaves that connection in userspace —
/// the kernel takes the TLS ULP only on an established socket — which is right, but not what
/// this test is about.) The kernel really did the records: every connection logs
/// `ktls="tx+rx"` with the suite asked for, and `/proc/net/tls_stat` counts the kTLS sockets
/// and the key updates (`TlsRxRekeyOk`), with no decryption error.
#[test]
fn transfers_in_the_kernel_with_each_cipher_key_updates_and_tickets() {
    let pki = Pki::new();
    let mut script = format!(
        r#"set -e
modprobe tls
{pki}
head -c 2097152 /dev/urandom >/tmp/in
seq 1 100000 >>/tmp/in
snapshot() {{
    while read -r name value; do echo "tls_stat $1 $name $value"; done </proc/net/tls_stat
}}
wait_listening() {{
    i=0
    until grep -qs listening "$1" || [ $i -ge 300 ]; do sleep 0.2; i=$((i + 1)); done
    grep -q listening "$1" || {{ cat "$1"; exit 1; }}
}}
replink-vm-peer echo 127.0.0.1:7000 &
replink reverse-proxy --listen 127.0.0.1:7443 --route {ROUTE}=127.0.0.1:7000 --workers 1 \
    --ktls on --rekey-after 512KiB --cert /tmp/server.pem --key /tmp/server.key --ca /tmp/ca.pem \
    >/tmp/reverse.log 2>&1 &
wait_listening /tmp/reverse.log
snapshot before
port=7500
"#,
        pki = pki_into_vm(&pki),
    );
    for (cipher, _) in CIPHERS {
        for comp in ["zstd", "off"] {
            script.push_str(&format!(
                r#"port=$((port + 1))
log=/tmp/forward-{cipher}-{comp}.log
replink forward-proxy --listen 127.0.0.1:$port --target 127.0.0.1:7443 --sni {ROUTE} \
    --workers 1 --ktls on --ciphers {cipher} --compression {comp} --rekey-after 512KiB \
    --cert /tmp/client.pem --key /tmp/client.key --ca /tmp/ca.pem >$log 2>&1 &
fpid=$!
wait_listening $log
replink-vm-peer send 127.0.0.1:$port /tmp/in /tmp/out
cmp /tmp/in /tmp/out && echo "transfer-ok {cipher} {comp} $(sha256sum </tmp/in)"
replink-vm-peer send 127.0.0.1:$port /tmp/in /tmp/out2
cmp /tmp/in /tmp/out2 && echo "resumed-ok {cipher} {comp}"
sleep 0.3
kill $fpid
echo "--- forward {cipher} {comp}"
grep closed $log
"#
            ));
        }
    }
    // A forward end killed mid-stream: the reverse end's kernel-TLS socket sees a reset (or
    // an end without close_notify) and fails the connection, resetting the upstream leg; the
    // client's copy is short: nothing passes for complete.
    script.push_str(&format!(
        r#"head -c 33554432 /dev/urandom >/tmp/big
replink forward-proxy --listen 127.0.0.1:7600 --target 127.0.0.1:7443 --sni {ROUTE} \
    --workers 1 --ktls on --compression off \
    --cert /tmp/client.pem --key /tmp/client.key --ca /tmp/ca.pem >/tmp/forward-killed.log 2>&1 &
fpid=$!
wait_listening /tmp/forward-killed.log
replink-vm-peer send 127.0.0.1:7600 /tmp/big /tmp/big.out &
spid=$!
sleep 1.5
kill -9 $fpid
if wait $spid; then echo "killed-send: exit 0"; else echo "killed-send: exit $?"; fi
if cmp -s /tmp/big /tmp/big.out; then echo "killed-copy: complete"; else echo "killed-copy: short $(wc -c </tmp/big.out)"; fi
sleep 0.5
"#
    ));
    script.push_str("snapshot after\necho '--- reverse'\ncat /tmp/reverse.log\n");

    let started = Instant::now();
    let run = run_in_ktls_vm(&script, &[static_replink_bin(), static_vm_peer_bin()]);
    let console = strip_ansi(&run.console);
    eprintln!("{console}\nVM run: {:?}", started.elapsed());
    let run = VmRun {
        console,
        exit: run.exit,
    };
    run.assert_ok().assert_says(&["ktls=available"]);
    let console = &run.console;
    for (cipher, suite) in CIPHERS {
        for comp in ["zstd", "off"] {
            run.assert_says(&[
                &format!("transfer-ok {cipher} {comp}"),
                &format!("resumed-ok {cipher} {comp}"),
            ]);
            let section = console
                .split(&format!("--- forward {cipher} {comp}\n"))
                .nth(1)
                .and_then(|rest| rest.split("\n---").next())
                .unwrap_or_default();
            let closed: Vec<&str> = section.lines().filter(|l| l.contains("closed")).collect();
            assert_eq!(closed.len(), 2, "{cipher} {comp}:\n{section}");
            for line in &closed {
                for needle in [
                    "ktls=\"tx+rx\"",
                    "ktls_fallback=\"-\"",
                    "reason=\"done\"",
                    &format!("cipher=\"{suite}\""),
                    &format!("zstd={}", comp == "zstd"),
                ] {
                    assert!(line.contains(needle), "{cipher} {comp}: {needle} in {line}");
                }
            }
            assert!(closed[0].contains("resumed=false"), "{}", closed[0]);
            assert!(closed[1].contains("resumed=true"), "{}", closed[1]);
        }
    }
    let reverse = console.split("--- reverse\n").nth(1).unwrap_or_default();
    let closed: Vec<&str> = reverse.lines().filter(|l| l.contains("closed")).collect();
    assert_eq!(closed.len(), 13, "{reverse}");
    for line in &closed[..12] {
        assert!(line.contains("ktls=\"tx+rx\""), "{line}");
        assert!(line.contains("reason=\"done\""), "{line}");
    }
    let killed = closed[12];
    assert!(killed.contains("ktls=\"tx+rx\""), "{killed}");
    // A reset (the killed process had unread bytes) or an end without close_notify.
    assert!(
        killed.contains("reason=\"tls_socket_error\"") || killed.contains("reason=\"truncated\""),
        "{killed}"
    );
    run.assert_says(&["killed-copy: short"]);
    let delta =
        |counter| tls_stat(console, "after", counter) - tls_stat(console, "before", counter);
    // 12 connections, each a kTLS socket at both ends.
    assert!(delta("TlsTxSw") >= 24, "TlsTxSw +{}", delta("TlsTxSw"));
    assert!(delta("TlsRxSw") >= 24, "TlsRxSw +{}", delta("TlsRxSw"));
    // Each 2.6 MiB transfer crosses 512 KiB several times each way, at both ends.
    assert!(
        delta("TlsRxRekeyOk") >= 12 * 2 * 2,
        "TlsRxRekeyOk +{}",
        delta("TlsRxRekeyOk")
    );
    assert_eq!(delta("TlsRxRekeyError"), 0);
    assert_eq!(delta("TlsTxRekeyError"), 0);
    assert_eq!(delta("TlsDecryptError"), 0);
}
