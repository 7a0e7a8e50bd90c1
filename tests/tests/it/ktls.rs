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

/// In a VM whose kernel has TLS (`scripts/ktls-vm.sh`): after `modprobe tls` the kernel lists
/// the ULP and `/proc/net/tls_stat`, and a static `replink reverse-proxy --ktls on` starts
/// and logs `ktls=available`.
#[test]
fn ktls_on_starts_in_a_vm_with_kernel_tls() {
    let pki = Pki::new();
    let p = &pki.files;
    let pem = |path: &std::path::Path| std::fs::read_to_string(path).expect("PKI file");
    let script = format!(
        r#"set -e
modprobe tls
echo "ulps: $(cat /proc/sys/net/ipv4/tcp_available_ulp)"
test -r /proc/net/tls_stat && echo "tls_stat: present"
cat >/tmp/server.pem <<'PEM'
{cert}PEM
cat >/tmp/server.key <<'PEM'
{key}PEM
cat >/tmp/ca.pem <<'PEM'
{ca}PEM
chmod 600 /tmp/server.key
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
        cert = pem(&p.server_cert),
        key = pem(&p.server_key),
        ca = pem(&p.ca_pem),
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
