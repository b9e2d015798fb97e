//! The `clicktrail` command line: parse, load config, set up logging, dispatch.

// The collector allocates per request (bodies, parsed events, spool records): mimalloc made
// malloc/free, ~10% of its CPU under glibc, measurably cheaper (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod cli;

use std::time::Duration;

use clicktrail::config::{Config, LogFormat};
use clicktrail::dlq::Stage;
use clicktrail::migrate::{self, Dialect, ServerVersion};

#[derive(Parser)]
#[command(
    name = "clicktrail",
    version,
    about = "Self-hosted UX-analytics collector"
)]
struct Cli {
    /// Configuration file; `CLICKTRAIL_*` environment variables override its keys.
    #[arg(
        long,
        global = true,
        env = "CLICKTRAIL_CONFIG",
        default_value = "config/clicktrail.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector (HTTP, spool, sink).
    Serve,
    /// Create or upgrade the ClickHouse schema.
    Migrate {
        /// Print the SQL instead of running it.
        #[arg(long, requires = "server_version")]
        print_sql: bool,
        /// With --print-sql: the ClickHouse version to render for, e.g. 18.16 or 26.1.
        #[arg(long)]
        server_version: Option<String>,
        /// With --print-sql: render for this cluster (`clickhouse.cluster`), ON CLUSTER.
        #[arg(long, requires = "print_sql")]
        cluster: Option<String>,
        /// Do not wait for inserts stamped before a cutover (migration 0006) to commit: only
        /// when no collector is running against this database (scripts/run.sh, `make run`).
        #[arg(long, conflicts_with = "print_sql")]
        no_insert_wait: bool,
    },
    /// Validate the configuration and check ClickHouse and the data directory.
    Check,
    /// Archive cold day partitions to Parquet (verified, then deleted from ClickHouse).
    Compact {
        /// One run, then exit (otherwise: run every `compactor.interval`, like `serve` does).
        #[arg(long)]
        once: bool,
        /// Override `compactor.hot_days`.
        #[arg(long)]
        hot_days: Option<u32>,
        /// Show what would be archived, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Inspect and replay dead letters (events that failed validation or were refused by ClickHouse).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// A table of entries: stage, reason, events, first and last failure.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One entry: its events as received and the full reason.
    Show { id: u64 },
    /// Re-validate and re-enqueue entries through the running collector; removes only what
    /// was delivered. Exit code 3 when some entries still fail.
    Replay {
        /// Only entries of this stage.
        #[arg(long, value_enum)]
        stage: Option<Stage>,
        /// Only entries whose reason contains this text (case-insensitive).
        #[arg(long)]
        reason_contains: Option<String>,
        /// Show what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for ClickHouse to confirm the replayed events.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
}

fn main() -> ExitCode {
    // Reads FAILPOINTS in test builds (feature `failpoints`); does nothing otherwise.
    let _failpoints = fail::FailScenario::setup();
    // Spool segments, dead letters and archive staging hold visitors' data: not for others.
    clicktrail::datadir::private_umask();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    // The default path may be absent (env-only set-ups); an explicit one must exist.
    let explicit = path != Path::new("config/clicktrail.toml");
    Config::load(path, explicit).with_context(|| format!("configuration {}", path.display()))
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Migrate {
        print_sql: true,
        server_version: Some(v),
        cluster,
        ..
    } = &cli.command
    {
        // Printing needs no server and no valid sites; only the database name matters.
        let version: ServerVersion = v.parse()?;
        let db = Config::load(&cli.config, false)
            .map(|c| c.clickhouse.database)
            .unwrap_or_else(|_| "clicktrail".to_string());
        let cluster = cluster.as_deref().unwrap_or("");
        if !cluster.is_empty() && !clicktrail::config::is_cluster_name(cluster) {
            anyhow::bail!(
                "--cluster `{cluster}`: letters, digits and underscores, not starting with a digit"
            );
        }
        let layout = migrate::Layout::from_name(cluster);
        print!("{}", migrate::plan_sql(Dialect { version }, &db, layout)?);
        return Ok(ExitCode::SUCCESS);
    }
    let config = load_config(&cli.config)?;
    init_logging(&config);
    let rt = runtime()?;
    match cli.command {
        Command::Serve => rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {} (key `listen`)", config.listen))?;
            let path = cli.config.clone();
            let explicit = path != Path::new("config/clicktrail.toml");
            let reload: clicktrail::serve::Reload = Box::new(move || Config::load(&path, explicit));
            clicktrail::serve::run_with_reload(
                config,
                listener,
                clicktrail::serve::shutdown_signal(),
                Some(reload),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Migrate { no_insert_wait, .. } => rt.block_on(async {
            let wait = if no_insert_wait {
                migrate::InsertWait::Skip
            } else {
                migrate::InsertWait::of(&config)
            };
            let applied = migrate::run(&config.clickhouse, wait).await?;
            if applied.is_empty() {
                println!("schema is up to date");
            } else {
                for m in applied {
                    println!("applied {m}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Check => rt.block_on(cli::check::run(config)),
        Command::Compact {
            once,
            hot_days,
            dry_run,
        } => rt.block_on(cli::compact::run(&config, once, hot_days, dry_run)),
        Command::Dlq { command } => match command {
            DlqCommand::List { json } => cli::dlq::list(&config, json),
            DlqCommand::Show { id } => cli::dlq::show(&config, id),
            DlqCommand::Replay {
                stage,
                reason_contains,
                dry_run,
                wait,
            } => rt.block_on(cli::dlq::replay(
                &config,
                cli::dlq::ReplayOptions {
                    stage,
                    reason_contains,
                    dry_run,
                    wait,
                },
            )),
        },
    }
}
