//! `replink-pki`: the certificate authority workflow for replink's mutual TLS.
//!
//! Exit codes: 0 done, 1 refused (by the operator or by a check) or bad input, 2 usage.

#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use replink_pki::authority::{CaDir, CaLocation, CaSpec, Revocation, REASONS};
use replink_pki::files::{read_password_file, OutputSet};
use replink_pki::request::{new_request, LeafUsage, ParsedRequest, RequestSpec, Subject};
use replink_pki::{fmt_time, hex_serial, parse_serial, KeyAlgorithm};

/// The smallest password accepted for a CA key.
const MIN_PASSWORD: usize = 8;

#[derive(Parser)]
#[command(
    name = "replink-pki",
    version,
    about = "Certificate authority for replink: CA, server/client keys and CSRs, review-and-sign, CRLs",
    after_help = "From nothing to working mTLS:\n  replink-pki create-ca --dn-common-name \"Replication Root CA\" -o ca-certs\n  replink-pki create-server --dn-common-name primary -d pg.repl.example.com -o server-certs\n  replink-pki create-client --dn-common-name replica-zurich -o client-certs\n  replink-pki sign-server-csr --ca-dir ca-certs --input-csr server-certs/server.csr --output server-certs/server.pem\n  replink-pki sign-client-csr --ca-dir ca-certs --input-csr client-certs/client.csr --output client-certs/client.pem"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a CA: a self-signed certificate and its key, encrypted under a password.
    CreateCa(CreateCa),
    /// Create a server key and a certificate signing request (CSR) for it.
    CreateServer(CreateLeaf),
    /// Create a client key and a certificate signing request (CSR) for it.
    CreateClient(CreateLeaf),
    /// Review a server CSR and sign it with the CA.
    SignServerCsr(Sign),
    /// Review a client CSR and sign it with the CA.
    SignClientCsr(Sign),
    /// Issue a certificate revocation list (CRL) signed by the CA.
    GenerateCrl(GenerateCrl),
    /// Print what a certificate, CSR or CRL file holds.
    Show {
        /// Files (PEM or DER).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Args)]
struct Dn {
    /// Common name (CN) of the subject.
    #[arg(long = "dn-common-name", value_name = "CN")]
    common_name: String,
    /// Organization (O).
    #[arg(long = "dn-organization", value_name = "O")]
    organization: Option<String>,
    /// Organizational unit (OU).
    #[arg(long = "dn-organizational-unit", value_name = "OU")]
    organizational_unit: Option<String>,
}

impl Dn {
    fn subject(&self) -> Subject {
        Subject {
            common_name: self.common_name.clone(),
            organization: self.organization.clone(),
            organizational_unit: self.organizational_unit.clone(),
        }
    }
}

#[derive(Args)]
struct CreateCa {
    /// Days the CA certificate is valid.
    #[arg(long, default_value_t = 1825, value_name = "DAYS")]
    valid_days: u32,
    #[command(flatten)]
    dn: Dn,
    /// Key type: ecdsa-p256, ed25519 or rsa-3072.
    #[arg(long, default_value = "ecdsa-p256", value_name = "TYPE")]
    key_type: KeyAlgorithm,
    /// Directory to create the CA in (ca.pem, ca.key, crlnumber, issued/).
    #[arg(short = 'o', long = "output-dir", value_name = "DIR")]
    output: PathBuf,
    /// Read the CA key password from this file (mode 0600) instead of asking.
    #[arg(long, value_name = "FILE", conflicts_with = "no_password")]
    password_file: Option<PathBuf>,
    /// Store the CA key unencrypted (not recommended).
    #[arg(long)]
    no_password: bool,
    /// Replace an existing CA in the directory.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct CreateLeaf {
    /// The validity to ask the CA operator for (printed in the next step; the CA decides).
    #[arg(long, default_value_t = 365, value_name = "DAYS")]
    valid_days: u32,
    #[command(flatten)]
    dn: Dn,
    /// A DNS name for the certificate (repeatable; `*.example.com` wildcards allowed).
    #[arg(short = 'd', long = "dns", value_name = "NAME")]
    dns: Vec<String>,
    /// An IP address for the certificate (repeatable).
    #[arg(long = "ip-address", value_name = "IP")]
    ips: Vec<IpAddr>,
    /// A URI for the certificate, e.g. a SPIFFE ID (repeatable).
    #[arg(long = "uri", value_name = "URI")]
    uris: Vec<String>,
    /// Key type: ecdsa-p256, ed25519 or rsa-3072.
    #[arg(long, default_value = "ecdsa-p256", value_name = "TYPE")]
    key_type: KeyAlgorithm,
    /// Directory for the key and the CSR (server.key + server.csr, or client.*).
    #[arg(short = 'o', long = "output-dir", value_name = "DIR")]
    output: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct Sign {
    /// Days the certificate is valid (never beyond the CA's own expiry).
    #[arg(long, default_value_t = 365, value_name = "DAYS")]
    valid_days: u32,
    /// The CA directory made by create-ca.
    #[arg(long, value_name = "DIR")]
    ca_dir: PathBuf,
    /// The CSR to sign (PEM or DER).
    #[arg(long, value_name = "FILE")]
    input_csr: PathBuf,
    /// Where to write the signed certificate (PEM).
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Append the CA certificate after the leaf in the output.
    #[arg(long)]
    chain: bool,
    /// A CRL distribution point URL to put in the certificate (repeatable).
    #[arg(long, value_name = "URL")]
    crl_url: Vec<String>,
    /// Sign without asking for confirmation.
    #[arg(long)]
    yes: bool,
    /// Read the CA key password from this file (mode 0600) instead of asking.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct GenerateCrl {
    /// The CA directory made by create-ca.
    #[arg(long, value_name = "DIR")]
    ca_dir: PathBuf,
    /// Serial number to revoke, in hex as `show` prints it (repeatable).
    #[arg(long, value_name = "HEX")]
    serial: Vec<String>,
    /// A certificate to revoke, by file (repeatable).
    #[arg(long, value_name = "FILE")]
    cert: Vec<PathBuf>,
    /// Revocation reason: unspecified, keyCompromise, caCompromise, affiliationChanged,
    /// superseded, cessationOfOperation, privilegeWithdrawn.
    #[arg(long, value_name = "REASON")]
    reason: Option<String>,
    /// An earlier CRL of this CA whose entries the new one keeps (may be the --output file).
    #[arg(long, value_name = "FILE")]
    append_to: Option<PathBuf>,
    /// Days until the CRL's next update (proxies refuse an expired CRL).
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    valid_days: u32,
    /// Where to write the CRL (PEM).
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Read the CA key password from this file (mode 0600) instead of asking.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
}

/// `REPLINK_GENERATE_DOCS=DIR`: writes shell completions (bash, zsh, fish) and the man page
/// for this command into DIR and exits (`scripts/release.sh` packs them).
fn generate_docs() -> Option<std::io::Result<()>> {
    use clap::CommandFactory;
    let dir = std::path::PathBuf::from(std::env::var_os("REPLINK_GENERATE_DOCS")?);
    let write = || {
        let mut cmd = Cli::command();
        let name = cmd.get_name().to_owned();
        std::fs::create_dir_all(&dir)?;
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            clap_complete::generate_to(shell, &mut cmd, &name, &dir)?;
        }
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.1")), page)
    };
    Some(write())
}

fn main() -> ExitCode {
    if let Some(done) = generate_docs() {
        return match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("replink-pki: generating docs: {e}");
                ExitCode::from(1)
            }
        };
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replink-pki: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CreateCa(a) => create_ca(a),
        Command::CreateServer(a) => create_leaf(a, LeafUsage::Server),
        Command::CreateClient(a) => create_leaf(a, LeafUsage::Client),
        Command::SignServerCsr(a) => sign(a, LeafUsage::Server),
        Command::SignClientCsr(a) => sign(a, LeafUsage::Client),
        Command::GenerateCrl(a) => generate_crl(a),
        Command::Show { files } => {
            for f in files {
                if let Some(name) = f.to_str() {
                    println!("{name}:");
                }
                print!("{}", replink_pki::inspect::describe_file(&f)?);
            }
            Ok(())
        }
    }
}

fn create_ca(a: CreateCa) -> anyhow::Result<()> {
    let password = if a.no_password {
        eprintln!(
            "WARNING: the CA key will be stored UNENCRYPTED in {}; anyone who can read it can issue certificates your proxies trust.",
            a.output.join("ca.key").display()
        );
        None
    } else {
        Some(new_password(a.password_file.as_deref())?)
    };
    let spec = CaSpec {
        subject: a.dn.subject(),
        valid_days: a.valid_days,
        algorithm: a.key_type,
    };
    let ca = CaDir::create(
        &a.output,
        &spec,
        password.as_deref().map(str::as_bytes),
        a.force,
    )?;
    println!("Created CA {:?}", spec.subject.common_name);
    println!(
        "  certificate: {} (give this to every replink as --ca)",
        ca.paths.cert.display()
    );
    println!(
        "  key:         {} ({}; keep it offline)",
        ca.paths.key.display(),
        if password.is_some() {
            "encrypted"
        } else {
            "NOT encrypted"
        }
    );
    println!("  valid until: {}", fmt_time(ca.not_after));
    println!("  SHA-256:     {}", ca.fingerprint);
    Ok(())
}

fn create_leaf(a: CreateLeaf, usage: LeafUsage) -> anyhow::Result<()> {
    let spec = RequestSpec {
        usage,
        subject: a.dn.subject(),
        dns_names: a.dns,
        ips: a.ips,
        uris: a.uris,
        algorithm: a.key_type,
    };
    let req = new_request(&spec)?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("{}: cannot create directory", a.output.display()))?;
    let name = usage.name();
    let key = a.output.join(format!("{name}.key"));
    let csr = a.output.join(format!("{name}.csr"));
    let mut out = OutputSet::new();
    out.private(&key, req.key_pem, a.force);
    out.public(&csr, req.csr_pem, a.force);
    out.commit()?;
    println!(
        "Created a {name} key and CSR for {:?}",
        spec.subject.common_name
    );
    println!("  key: {} (mode 0600; stays on this host)", key.display());
    println!("  CSR: {} (send this to the CA operator)", csr.display());
    println!(
        "Next, on the CA host: replink-pki sign-{name}-csr --valid-days {} --ca-dir CA_DIR --input-csr {name}.csr --output {name}.pem",
        a.valid_days
    );
    Ok(())
}

fn sign(a: Sign, usage: LeafUsage) -> anyhow::Result<()> {
    let location = CaLocation::find(&a.ca_dir)?;
    if !a.force && a.output.exists() {
        bail!(
            "{}: already exists (refusing to overwrite; --force replaces it)",
            a.output.display()
        );
    }
    let csr = ParsedRequest::read(&a.input_csr)?;
    let password = ca_password(&location, a.password_file.as_deref())?;
    let ca = location.unlock(password.as_deref().map(str::as_bytes))?;
    let plan = ca.plan(&csr, usage, a.valid_days, &a.crl_url)?;
    print!("{plan}");
    if !a.yes && !confirm("Sign this certificate? Type YES to sign: ")? {
        bail!("not signed: the operator did not answer YES");
    }
    let leaf = ca.sign(&plan, &csr)?;
    let mut output = leaf.clone();
    if a.chain {
        output.push_str(&ca.cert_pem());
    }
    let mut out = OutputSet::new();
    out.public(&a.output, output, a.force);
    out.public(&ca.issued_path(&plan.serial), leaf, false);
    out.commit()?;
    println!(
        "Signed: {} (serial {}{})",
        a.output.display(),
        hex_serial(&plan.serial),
        if a.chain { ", CA appended" } else { "" }
    );
    Ok(())
}

fn generate_crl(a: GenerateCrl) -> anyhow::Result<()> {
    let location = CaLocation::find(&a.ca_dir)?;
    let overwrite = a.force || a.append_to.as_deref() == Some(a.output.as_path());
    if !overwrite && a.output.exists() {
        bail!(
            "{}: already exists (refusing to overwrite; --force replaces it, --append-to {} extends it)",
            a.output.display(),
            a.output.display()
        );
    }
    if a.serial.is_empty() && a.cert.is_empty() && a.append_to.is_none() {
        eprintln!("note: no --serial or --cert given: the CRL revokes nothing (an empty CRL is valid and says so)");
    }
    let reason = match &a.reason {
        None => None,
        Some(r) => Some(
            REASONS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(r))
                .map(|(_, reason)| *reason)
                .with_context(|| {
                    let names: Vec<&str> = REASONS.iter().map(|(n, _)| *n).collect();
                    format!("unknown --reason {r:?} (one of: {})", names.join(", "))
                })?,
        ),
    };
    let now = time::OffsetDateTime::now_utc();
    let mut revoke = Vec::new();
    for s in &a.serial {
        revoke.push(parse_serial(s)?);
    }
    for c in &a.cert {
        revoke.push(replink_pki::inspect::cert_serial(c)?);
    }
    let revoke: Vec<Revocation> = revoke
        .into_iter()
        .map(|serial| Revocation {
            serial,
            reason,
            time: now,
        })
        .collect();
    let password = ca_password(&location, a.password_file.as_deref())?;
    let ca = location.unlock(password.as_deref().map(str::as_bytes))?;
    for r in &revoke {
        if !ca.has_issued(&r.serial) {
            eprintln!(
                "warning: serial {} is not among the certificates signed from {} (revoking it anyway)",
                hex_serial(&r.serial),
                a.ca_dir.display()
            );
        }
    }
    let crl = ca.revocation_list(&revoke, a.append_to.as_deref(), a.valid_days)?;
    let mut out = OutputSet::new();
    out.public(&a.output, crl.pem, overwrite);
    out.commit()?;
    ca.record_crl_number(crl.number)?;
    println!(
        "CRL number {} written to {}: {} revoked ({} new), next update {}",
        crl.number,
        a.output.display(),
        crl.entries.len(),
        crl.added.len(),
        fmt_time(crl.next_update)
    );
    for e in &crl.entries {
        println!("  {}", hex_serial(&e.serial));
    }
    Ok(())
}

/// The password for a new CA key: from the file, or asked twice on the terminal.
fn new_password(file: Option<&Path>) -> anyhow::Result<String> {
    let password = match file {
        Some(f) => read_password_file(f)?,
        None => {
            let first = prompt_password("New CA key password: ")?;
            let second = prompt_password("Repeat the password: ")?;
            if first != second {
                bail!("the two passwords differ; nothing was created");
            }
            first
        }
    };
    if password.chars().count() < MIN_PASSWORD {
        bail!(
            "the CA key password must have at least {MIN_PASSWORD} characters (or pass --no-password to store the key unencrypted)"
        );
    }
    Ok(password)
}

/// The password of an existing CA key, if it is encrypted.
fn ca_password(location: &CaLocation, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if !location.key_is_encrypted() {
        return Ok(None);
    }
    Ok(Some(match file {
        Some(f) => read_password_file(f)?,
        None => prompt_password(&format!("Password for {}: ", location.paths.key.display()))?,
    }))
}

fn prompt_password(prompt: &str) -> anyhow::Result<String> {
    rpassword::prompt_password(prompt).map_err(|e| {
        anyhow::anyhow!("cannot ask for the password: no terminal ({e}); pass --password-file FILE")
    })
}

/// Asks on stderr and reads one line from stdin (a terminal, or a pipe in scripts).
fn confirm(prompt: &str) -> anyhow::Result<bool> {
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the answer")?;
    if n == 0 && !std::io::stdin().is_terminal() {
        eprintln!();
        bail!("not signed: no answer on standard input (pass --yes to sign from a script)");
    }
    Ok(line.trim() == "YES")
}
