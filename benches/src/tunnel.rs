//! Starting the tunnels under test (replink, HAProxy, nginx stream, stunnel, socat): two
//! processes each (forward end, reverse end) on loopback, with the same certificates (ECDSA
//! P-256, TLS 1.3, AES-128-GCM) and one core's worth of threads per end (socat forks a process
//! per connection; its children are counted with it, see `measure`).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use replink_pki::ThrowawayPki;

pub const SNI: &str = "bench.repl.test";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Replink { zstd: Option<i32> },
    Haproxy,
    Nginx,
    Stunnel,
    Socat,
}

/// The peers, in the order the report's columns follow.
pub const PEERS: [Kind; 4] = [Kind::Haproxy, Kind::Nginx, Kind::Stunnel, Kind::Socat];

impl Kind {
    pub fn name(&self) -> String {
        match self {
            Kind::Replink { zstd: None } => "replink-off".into(),
            Kind::Replink { zstd: Some(l) } => format!("replink-zstd{l}"),
            Kind::Haproxy => "haproxy".into(),
            Kind::Nginx => "nginx".into(),
            Kind::Stunnel => "stunnel".into(),
            Kind::Socat => "socat".into(),
        }
    }

    pub fn is_replink(&self) -> bool {
        matches!(self, Kind::Replink { .. })
    }

    /// Whether the forward end can resume TLS sessions at all: socat forks a fresh process,
    /// with a fresh TLS context, for every connection.
    pub fn can_resume(&self) -> bool {
        !matches!(self, Kind::Socat)
    }
}

/// A child process killed on drop; its stderr goes to a file.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(cmd: &Path, args: &[String], log: PathBuf) -> Result<Proc> {
    spawn_env(cmd, args, log, &[])
}

fn spawn_env(cmd: &Path, args: &[String], log: PathBuf, env: &[(&str, &Path)]) -> Result<Proc> {
    let file = std::fs::File::create(&log)?;
    let child = Command::new(cmd)
        .args(args)
        .envs(env.iter().copied())
        .env("REPLINK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {}", cmd.display()))?;
    Ok(Proc { child, log })
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("{addr} never accepted connections");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub struct Pair {
    pub forward: Proc,
    pub reverse: Proc,
    pub listen: SocketAddr,
}

impl Pair {
    pub fn pids(&self) -> [u32; 2] {
        [self.forward.pid(), self.reverse.pid()]
    }
}

/// Certificates for all tunnels, plus the combined PEMs HAProxy wants.
pub struct Certs {
    pub pki: ThrowawayPki,
    pub server_combined: PathBuf,
    pub client_combined: PathBuf,
    pub dir: PathBuf,
}

pub fn certs(dir: &Path) -> Result<Certs> {
    let pki = ThrowawayPki::mint(dir, &[SNI])?;
    let combine = |cert: &Path, key: &Path, out: &str| -> Result<PathBuf> {
        let path = dir.join(out);
        let text = std::fs::read_to_string(cert)? + &std::fs::read_to_string(key)?;
        replink_pki::write_private_file(&path, text.as_bytes(), true)?;
        Ok(path)
    };
    Ok(Certs {
        server_combined: combine(&pki.server_cert, &pki.server_key, "server-combined.pem")?,
        client_combined: combine(&pki.client_cert, &pki.client_key, "client-combined.pem")?,
        dir: dir.to_owned(),
        pki,
    })
}

/// Starts a pair of `kind` in front of `upstream`; `resume`: whether the forward end resumes
/// TLS sessions (each tunnel's own way of saying so; socat never does).
pub fn start(
    kind: Kind,
    certs: &Certs,
    replink: &Path,
    upstream: SocketAddr,
    tag: &str,
    resume: bool,
) -> Result<Pair> {
    let rev_port = free_port()?;
    let fwd_port = free_port()?;
    let rev_addr = SocketAddr::from(([127, 0, 0, 1], rev_port));
    let fwd_addr = SocketAddr::from(([127, 0, 0, 1], fwd_port));
    let p = &certs.pki;
    let s = |p: &Path| p.display().to_string();
    let (reverse, forward) = match kind {
        Kind::Replink { zstd } => {
            let mut common = vec![
                "--workers".to_string(),
                "1".into(),
                "--ca".into(),
                s(&p.ca_pem),
            ];
            match zstd {
                None => common.extend(["--compression".into(), "off".into()]),
                Some(l) => common.extend([
                    "--compression".into(),
                    "zstd".into(),
                    format!("--zstd-level={l}"),
                ]),
            }
            let mut rev = vec![
                "reverse-proxy".to_string(),
                "--listen".into(),
                rev_addr.to_string(),
                "--route".into(),
                format!("{SNI}={upstream}"),
            ];
            rev.extend([
                "--cert".into(),
                s(&p.server_cert),
                "--key".into(),
                s(&p.server_key),
            ]);
            rev.extend(common.clone());
            let reverse = spawn(replink, &rev, certs.dir.join(format!("{tag}-reverse.log")))?;
            let mut fwd = vec![
                "forward-proxy".to_string(),
                "--listen".into(),
                fwd_addr.to_string(),
                "--target".into(),
                rev_addr.to_string(),
                "--sni".into(),
                SNI.into(),
                "--session-resumption".into(),
                if resume { "on" } else { "off" }.into(),
            ];
            fwd.extend([
                "--cert".into(),
                s(&p.client_cert),
                "--key".into(),
                s(&p.client_key),
            ]);
            fwd.extend(common);
            wait_port(rev_addr).with_context(|| reverse.log_text())?;
            let forward = spawn(replink, &fwd, certs.dir.join(format!("{tag}-forward.log")))?;
            (reverse, forward)
        }
        Kind::Haproxy => {
            let global = "global\n  nbthread 1\n  maxconn 8000\n  ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256\n  ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\ndefaults\n  mode tcp\n  timeout connect 10s\n  timeout client 1h\n  timeout server 1h\n";
            let rev_cfg = format!(
                "{global}frontend fe\n  bind {rev_addr} ssl crt {} ca-file {} verify required\n  default_backend be\nbackend be\n  server up {upstream}\n",
                s(&certs.server_combined), s(&p.ca_pem)
            );
            let fwd_cfg = format!(
                "{global}frontend fe\n  bind {fwd_addr}\n  default_backend be\nbackend be\n  server rev {rev_addr} ssl crt {} ca-file {} verify required verifyhost {SNI} sni str({SNI}){}\n",
                s(&certs.client_combined), s(&p.ca_pem), if resume { "" } else { " no-ssl-reuse" }
            );
            let rev_path = certs.dir.join(format!("{tag}-reverse.cfg"));
            let fwd_path = certs.dir.join(format!("{tag}-forward.cfg"));
            std::fs::write(&rev_path, rev_cfg)?;
            std::fs::write(&fwd_path, fwd_cfg)?;
            let haproxy = Path::new("haproxy");
            let reverse = spawn(
                haproxy,
                &["-db".into(), "-f".into(), s(&rev_path)],
                certs.dir.join(format!("{tag}-reverse.log")),
            )?;
            wait_port(rev_addr).with_context(|| reverse.log_text())?;
            let forward = spawn(
                haproxy,
                &["-db".into(), "-f".into(), s(&fwd_path)],
                certs.dir.join(format!("{tag}-forward.log")),
            )?;
            (reverse, forward)
        }
        Kind::Nginx => {
            // One process per end (master_process off), so its CPU is all in that pid.
            let head = |end: &str| {
                format!(
                    "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 1;\nmaster_process off;\ndaemon off;\nerror_log stderr warn;\npid {};\nevents {{ worker_connections 8192; }}\n",
                    certs.dir.join(format!("{tag}-{end}.pid")).display()
                )
            };
            let rev_cfg = format!(
                "{}stream {{\n server {{\n  listen {rev_addr} ssl;\n  ssl_certificate {};\n  ssl_certificate_key {};\n  ssl_protocols TLSv1.3;\n  ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;\n  ssl_verify_client on;\n  ssl_client_certificate {};\n  proxy_pass {upstream};\n  proxy_timeout 1h;\n }}\n}}\n",
                head("reverse"), s(&p.server_cert), s(&p.server_key), s(&p.ca_pem)
            );
            let fwd_cfg = format!(
                "{}stream {{\n server {{\n  listen {fwd_addr};\n  proxy_pass {rev_addr};\n  proxy_timeout 1h;\n  proxy_ssl on;\n  proxy_ssl_protocols TLSv1.3;\n  proxy_ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;\n  proxy_ssl_certificate {};\n  proxy_ssl_certificate_key {};\n  proxy_ssl_trusted_certificate {};\n  proxy_ssl_verify on;\n  proxy_ssl_name {SNI};\n  proxy_ssl_server_name on;\n  proxy_ssl_session_reuse {};\n }}\n}}\n",
                head("forward"), s(&p.client_cert), s(&p.client_key), s(&p.ca_pem), if resume {"on"} else {"off"}
            );
            let rev_path = certs.dir.join(format!("{tag}-reverse.nginx.conf"));
            let fwd_path = certs.dir.join(format!("{tag}-forward.nginx.conf"));
            std::fs::write(&rev_path, rev_cfg)?;
            std::fs::write(&fwd_path, fwd_cfg)?;
            let nginx = Path::new("nginx");
            let args = |cfg: &Path| -> Vec<String> {
                vec![
                    "-e".into(),
                    "stderr".into(),
                    "-p".into(),
                    s(&certs.dir),
                    "-c".into(),
                    s(cfg),
                ]
            };
            let reverse = spawn(
                nginx,
                &args(&rev_path),
                certs.dir.join(format!("{tag}-reverse.log")),
            )?;
            wait_port(rev_addr).with_context(|| reverse.log_text())?;
            let forward = spawn(
                nginx,
                &args(&fwd_path),
                certs.dir.join(format!("{tag}-forward.log")),
            )?;
            (reverse, forward)
        }
        Kind::Stunnel => {
            // One process per end, in the foreground, a thread per connection (its default).
            let conf = |end: &str, body: String| -> Result<PathBuf> {
                let path = certs.dir.join(format!("{tag}-{end}.stunnel.conf"));
                std::fs::write(
                    &path,
                    format!(
                        "foreground = yes\npid =\n[tunnel]\nsslVersion = TLSv1.3\nciphersuites = TLS_AES_128_GCM_SHA256\nverify = 2\nCAfile = {}\n{body}",
                        s(&p.ca_pem)
                    ),
                )?;
                Ok(path)
            };
            let rev = conf(
                "reverse",
                format!(
                    "accept = {rev_addr}\nconnect = {upstream}\ncert = {}\nkey = {}\n",
                    s(&p.server_cert),
                    s(&p.server_key)
                ),
            )?;
            let fwd = conf(
                "forward",
                format!(
                    "debug = info\nclient = yes\naccept = {fwd_addr}\nconnect = {rev_addr}\ncert = {}\nkey = {}\nsni = {SNI}\ncheckHost = {SNI}\nsessionResume = {}\n",
                    s(&p.client_cert),
                    s(&p.client_key),
                    if resume { "yes" } else { "no" }
                ),
            )?;
            let stunnel = Path::new("stunnel");
            let reverse = spawn(
                stunnel,
                &[s(&rev)],
                certs.dir.join(format!("{tag}-reverse.log")),
            )?;
            wait_port(rev_addr).with_context(|| reverse.log_text())?;
            let forward = spawn(
                stunnel,
                &[s(&fwd)],
                certs.dir.join(format!("{tag}-forward.log")),
            )?;
            (reverse, forward)
        }
        Kind::Socat => {
            // socat 1.7.4 has no option for TLS 1.3 ciphersuites: OpenSSL's config file pins
            // it. `-b 131072`: its 8 KiB default buffer costs about twice the CPU.
            let ossl = certs.dir.join("socat-openssl.cnf");
            std::fs::write(
                &ossl,
                "openssl_conf = conf\n[conf]\nssl_conf = ssl\n[ssl]\nsystem_default = tls\n[tls]\nMinProtocol = TLSv1.3\nCiphersuites = TLS_AES_128_GCM_SHA256\n",
            )?;
            let socat = Path::new("socat");
            let tls = |cert: &Path, key: &Path| {
                format!(
                    "cert={},key={},cafile={},verify=1",
                    s(cert),
                    s(key),
                    s(&p.ca_pem)
                )
            };
            let rev_args = vec![
                "-b".to_string(),
                "131072".into(),
                format!(
                    "OPENSSL-LISTEN:{rev_port},bind=127.0.0.1,reuseaddr,fork,backlog=2048,{}",
                    tls(&p.server_cert, &p.server_key)
                ),
                format!("TCP:{upstream}"),
            ];
            let reverse = spawn_env(
                socat,
                &rev_args,
                certs.dir.join(format!("{tag}-reverse.log")),
                &[("OPENSSL_CONF", &ossl)],
            )?;
            wait_port(rev_addr).with_context(|| reverse.log_text())?;
            let fwd_args = vec![
                "-b".to_string(),
                "131072".into(),
                format!("TCP-LISTEN:{fwd_port},bind=127.0.0.1,reuseaddr,fork,backlog=2048"),
                format!(
                    "OPENSSL:{rev_addr},{},snihost={SNI},commonname={SNI}",
                    tls(&p.client_cert, &p.client_key)
                ),
            ];
            let forward = spawn_env(
                socat,
                &fwd_args,
                certs.dir.join(format!("{tag}-forward.log")),
                &[("OPENSSL_CONF", &ossl)],
            )?;
            (reverse, forward)
        }
    };
    wait_port(fwd_addr).with_context(|| forward.log_text())?;
    Ok(Pair {
        forward,
        reverse,
        listen: fwd_addr,
    })
}
