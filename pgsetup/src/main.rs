//! The `replink-pg` command line: flags to library calls. See the crate docs (`lib.rs`).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, CommandFactory, Parser, Subcommand};
use replink_pg::quote::{object_name, QualifiedName};
use replink_pg::{publisher, report, status, subscriber, Db, Endpoint};

/// Set up and watch PostgreSQL logical replication (publications, subscriptions, schema copy,
/// sequence sync, status).
///
/// Names of publications, subscriptions and roles are taken as written (no case folding);
/// table names are SQL names: `-t public.orders`, `-t '"My Schema"."My Table"'` (unquoted parts
/// fold to lower case; a name without a schema is looked up on the server's search_path).
#[derive(Parser)]
#[command(name = "replink-pg", version)]
struct Cli {
    /// The server the command acts on (publisher commands: the publisher; subscriber
    /// commands: the subscriber; status: either): a libpq URI or keyword/value string. libpq's
    /// TLS parameters (sslmode, sslrootcert, sslcert, sslkey, sslsni) are honoured here and in
    /// --publisher-url.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: Option<String>,
    /// A file (mode 0600) holding the password for --database-url; one trailing newline is
    /// ignored.
    #[arg(long, global = true, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Print the SQL that would change something (one statement per line) and change
    /// nothing; read-only checks still run.
    #[arg(long, global = true)]
    dry_run: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// On the publisher: the publication and the replication role.
    #[command(subcommand)]
    Publisher(PublisherCommand),
    /// On the subscriber: the subscription, and sequence values.
    #[command(subcommand)]
    Subscriber(SubscriberCommand),
    /// Publications, replication slots and their lag, subscriptions and per-table sync state.
    Status(StatusArgs),
}

#[derive(Subcommand)]
enum PublisherCommand {
    /// Create the publication (FOR ALL TABLES, or the --table list); an existing one is kept,
    /// its table list set to --table.
    Setup {
        #[arg(long, value_parser = object_name)]
        publication: String,
        /// A table to publish (repeatable); none: FOR ALL TABLES.
        #[arg(short = 't', long = "table", value_name = "TABLE")]
        tables: Vec<QualifiedName>,
        /// Fail if the publication exists.
        #[arg(long)]
        must_not_exist: bool,
    },
    /// Take tables out of the publication (tables not in it are noted and skipped).
    DropTable {
        #[arg(long, value_parser = object_name)]
        publication: String,
        #[arg(short = 't', long = "table", value_name = "TABLE", required = true)]
        tables: Vec<QualifiedName>,
    },
    /// Create a REPLICATION LOGIN role with a password and no grants (or, if it exists, make
    /// sure it has REPLICATION LOGIN and set its password).
    CreateRole {
        #[arg(long, value_parser = object_name)]
        role: String,
        /// A file (mode 0600) holding the new role's password. (--password-file is the
        /// password for --database-url.)
        #[arg(long, value_name = "FILE")]
        role_password_file: PathBuf,
        /// Fail if the role exists.
        #[arg(long)]
        must_not_exist: bool,
    },
}

#[derive(Args)]
struct PublisherUrl {
    /// How the publisher is reached: replink-pg connects there itself, and `subscriber setup`
    /// stores it in the subscription, so it must also work from the subscriber server (e.g.
    /// the local end of a replink forward proxy).
    #[arg(long, value_name = "URL")]
    publisher_url: String,
    /// A file (mode 0600) with the password for --publisher-url, kept out of argv (and
    /// written into the subscription's connection string).
    #[arg(long, value_name = "FILE")]
    publisher_password_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum SubscriberCommand {
    /// Create the subscription (checking the publisher first); an existing identical one is
    /// kept, a different one refused.
    Setup {
        #[arg(long, value_parser = object_name)]
        subscription: String,
        /// A publication to subscribe to (repeatable).
        #[arg(long, value_parser = object_name, required = true)]
        publication: Vec<String>,
        #[command(flatten)]
        publisher: PublisherUrl,
        /// Fail if the subscription exists.
        #[arg(long)]
        must_not_exist: bool,
        /// Copy the publisher's schema here first (pg_dump --schema-only), unless the
        /// published tables exist here already.
        #[arg(long)]
        copy_schema: bool,
        /// The pg_dump to use (default: the newest on PATH or under /usr/lib/postgresql).
        #[arg(long, value_name = "PATH")]
        pg_dump: Option<PathBuf>,
    },
    /// Set every sequence here to the publisher's value (logical replication does not carry
    /// sequences): before a switchover.
    SyncSequences {
        #[command(flatten)]
        publisher: PublisherUrl,
    },
}

#[derive(Args)]
struct StatusArgs {
    /// Follow the initial table sync of this database's subscriptions until every table is
    /// ready; a progress line on a terminal, plain lines otherwise.
    #[arg(long)]
    watch: bool,
    /// Print the report as JSON (not with --watch).
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// How often --watch looks.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, requires = "watch")]
    interval: Duration,
    /// With --watch: give up (exit 1) after this long.
    #[arg(long, value_parser = humantime::parse_duration, requires = "watch")]
    timeout: Option<Duration>,
    /// With --watch: the publisher, so bytes copied are shown against the tables' size there.
    #[arg(long, value_name = "URL", requires = "watch")]
    publisher_url: Option<String>,
    /// A file (mode 0600) with the password for --publisher-url.
    #[arg(long, value_name = "FILE", requires = "publisher_url")]
    publisher_password_file: Option<PathBuf>,
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

fn main() {
    if let Some(done) = generate_docs() {
        if let Err(e) = done {
            eprintln!("replink-pg: generating docs: {e}");
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("replink-pg: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(url) = cli.database_url.as_deref() else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "no server given: pass --database-url URL or set DATABASE_URL",
            )
            .exit()
    };
    let target = Endpoint::new(
        url,
        "--database-url",
        cli.password_file.as_deref(),
        "--password-file",
    )?;
    let publisher_endpoint = |p: &PublisherUrl| {
        Endpoint::new(
            &p.publisher_url,
            "--publisher-url",
            p.publisher_password_file.as_deref(),
            "--publisher-password-file",
        )
    };
    let mut db = Db::connect(&target, cli.dry_run)?;
    match cli.command {
        Command::Publisher(PublisherCommand::Setup {
            publication,
            tables,
            must_not_exist,
        }) => publisher::setup(
            &mut db,
            &publisher::PublicationSetup {
                publication,
                tables,
                must_not_exist,
            },
        )?,
        Command::Publisher(PublisherCommand::DropTable {
            publication,
            tables,
        }) => publisher::drop_tables(&mut db, &publication, &tables)?,
        Command::Publisher(PublisherCommand::CreateRole {
            role,
            role_password_file,
            must_not_exist,
        }) => {
            let password = replink_pg::conninfo::read_password_file(&role_password_file)
                .context("--role-password-file")?;
            publisher::create_role(
                &mut db,
                &publisher::RoleSetup {
                    role,
                    password,
                    must_not_exist,
                },
            )?
        }
        Command::Subscriber(SubscriberCommand::Setup {
            subscription,
            publication,
            publisher,
            must_not_exist,
            copy_schema,
            pg_dump,
        }) => {
            let endpoint = publisher_endpoint(&publisher)?;
            subscriber::setup(
                &mut db,
                &endpoint,
                &subscriber::SubscriptionSetup {
                    subscription,
                    publications: publication,
                    publisher_url: publisher.publisher_url,
                    must_not_exist,
                    copy_schema,
                    pg_dump,
                },
            )?
        }
        Command::Subscriber(SubscriberCommand::SyncSequences { publisher }) => {
            let mut publ = Db::connect(&publisher_endpoint(&publisher)?, true)?;
            subscriber::sync_sequences(&mut db, &mut publ)?
        }
        Command::Status(args) if args.watch => {
            let mut publ = match &args.publisher_url {
                Some(url) => Some(Db::connect(
                    &Endpoint::new(
                        url,
                        "--publisher-url",
                        args.publisher_password_file.as_deref(),
                        "--publisher-password-file",
                    )?,
                    true,
                )?),
                None => None,
            };
            status::watch(&mut db, publ.as_mut(), args.interval, args.timeout)?
        }
        Command::Status(args) => report::status(&mut db, args.json)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }
}
