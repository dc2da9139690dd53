//! The `cx-sentinel` binary: parses the command line and hands off to the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use cx_sentinel::codec::Format;
use cx_sentinel::config::Config;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

cx_sentinel::install_allocator!();

#[derive(Parser)]
#[command(
    version,
    about = "Pages a human when a high-stakes customer interaction turns negative."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the rules over a file of touchpoints in event time and print the alerts as JSON lines.
    Replay {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// Touchpoints: JSON lines, or an Avro object container file.
        #[arg(long)]
        input: PathBuf,
        #[arg(long, value_enum, default_value = "json")]
        format: FileFormat,
        /// Where alerts go (JSON lines); stdout if absent.
        #[arg(long)]
        output: Option<PathBuf>,
        /// At the end of input, let event time run on to this moment (RFC 3339, or `now`) and fire
        /// the SLA escalations and expiries due by then, as a live partition that stays quiet
        /// would. Without it, replay stops at the newest event time in the file.
        #[arg(long, value_parser = parse_until)]
        until: Option<Until>,
        /// Agents' case actions (JSON lines of `CaseAction`), merged with the touchpoints by event
        /// time (at the same instant, touchpoints first).
        #[arg(long)]
        actions: Option<PathBuf>,
    },
    /// Run the service: consume touchpoints, publish recovery alerts, serve HTTP. Stops on SIGTERM/SIGINT.
    Run {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
    },
    /// Everything in one process, nothing to install: an in-process Kafka cluster, a generator of
    /// realistic journeys, and the real pipeline; alerts print one readable line each on a
    /// terminal (JSON lines otherwise, or with --json). Ctrl-C stops it and prints a summary.
    Demo {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// Alerts as JSON lines even on a terminal.
        #[arg(long)]
        json: bool,
        /// Touchpoints per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Event-time seconds per wall-clock second.
        #[arg(long, default_value_t = 120.0)]
        speedup: f64,
    },
    /// Print the alert topic one readable line per alert (time, severity, status, customer,
    /// journey, rule, channel, reason), in the configured output format. Without --follow it
    /// stops at the end of the topic; without --from-beginning it starts at the end and follows.
    Tail {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// Start at the oldest alert the topic holds.
        #[arg(long)]
        from_beginning: bool,
        /// Keep waiting for new alerts at the end of the topic.
        #[arg(long)]
        follow: bool,
        /// Each alert as a JSON line (a JSON topic's records as they are).
        #[arg(long)]
        json: bool,
    },
    /// A self-contained HTML page of charts and tables from alerts (replay output or
    /// `tail --json`): cases per day by rule, journeys by cases and effort, time to recover,
    /// recovery rate by journey and channel.
    Report {
        /// Alerts, JSON lines.
        #[arg(long)]
        input: PathBuf,
        /// The touchpoints behind them (JSON lines, the replay input), for customer effort.
        #[arg(long)]
        touchpoints: Option<PathBuf>,
        #[arg(long, default_value = "report.html")]
        output: PathBuf,
        #[arg(long, default_value = "cx-sentinel report")]
        title: String,
    },
    /// Validate a configuration file; exits non-zero naming the key and the problem.
    CheckConfig {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
    },
}

/// `replay --until`: a moment, or the time the replay runs.
#[derive(Clone, Copy, Debug)]
enum Until {
    Now,
    At(i64),
}

fn parse_until(s: &str) -> Result<Until, String> {
    if s == "now" {
        return Ok(Until::Now);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("expected an RFC 3339 time (2026-03-01T09:00:00Z) or `now`: {e}"))?;
    Ok(Until::At((t.unix_timestamp_nanos() / 1_000_000) as i64))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FileFormat {
    Json,
    Avro,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

/// Logs go to stderr (stdout is for data: replay and demo print alerts there).
fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        cx_sentinel::config::LogFormat::Json => builder.json().init(),
        cx_sentinel::config::LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            init_tracing(&config);
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(cx_sentinel::service::run(config, shutdown_signal(), |_| {}))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            config,
            json,
            rate,
            speedup,
        } => {
            let mut config = Config::load(&config)?;
            if std::env::var_os("RUST_LOG").is_none() {
                // The demo reports its injected bad records as one summary line every few
                // seconds instead of the service's warning per dead letter.
                config.log.level = "warn,cx_sentinel::service::pipeline=error".into();
            }
            init_tracing(&config);
            let options = cx_sentinel::demo::DemoOptions {
                rate,
                speedup,
                color: cx_sentinel::render::stdout_wants_color(),
                readable: !json && std::io::IsTerminal::is_terminal(&std::io::stdout()),
                ..Default::default()
            };
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(cx_sentinel::demo::run(config, options, shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail {
            config,
            from_beginning,
            follow,
            json,
        } => {
            let config = Config::load(&config)?;
            let options = cx_sentinel::tail::TailOptions {
                from_beginning,
                follow,
                json,
                color: cx_sentinel::render::stdout_wants_color(),
            };
            let summary = cx_sentinel::tail::run(&config, options, &mut std::io::stdout().lock())
                .with_context(|| format!("reading alerts from '{}'", config.kafka.alert_topic))?;
            if summary.undecodable > 0 {
                eprintln!("tail: {} records were not alerts", summary.undecodable);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            input,
            touchpoints,
            output,
            title,
        } => {
            let open = |p: &PathBuf| {
                std::fs::File::open(p)
                    .map(BufReader::new)
                    .with_context(|| format!("opening {}", p.display()))
            };
            let alerts = cx_sentinel::report::read_alerts(open(&input)?)?;
            let tps = touchpoints
                .as_ref()
                .map(|p| cx_sentinel::report::read_touchpoints(open(p)?).map_err(anyhow::Error::from))
                .transpose()?;
            for (what, skipped, lines) in [("alerts", alerts.skipped, &alerts.bad_lines)]
                .into_iter()
                .chain(tps.as_ref().map(|t| ("touchpoints", t.skipped, &t.bad_lines)))
            {
                if skipped > 0 {
                    eprintln!(
                        "report: {skipped} {what} lines skipped (not records), first at lines {lines:?}"
                    );
                }
            }
            let report =
                cx_sentinel::report::analyze(&alerts.records, tps.as_ref().map(|t| t.records.as_slice()));
            let page = cx_sentinel::report::html(
                &report,
                &title,
                alerts.skipped + tps.as_ref().map_or(0, |t| t.skipped),
            )?;
            std::fs::write(&output, page).with_context(|| format!("writing {}", output.display()))?;
            eprintln!(
                "report: {} alerts, {} cases -> {}",
                report.alerts,
                report.cases.len(),
                output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            Config::load(&config)?;
            println!("{}: ok", config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            config,
            input,
            format,
            output,
            until,
            actions,
        } => {
            let config = Config::load(&config)?;
            let file =
                std::fs::File::open(&input).with_context(|| format!("opening input {}", input.display()))?;
            let format = match format {
                FileFormat::Json => Format::Json,
                FileFormat::Avro => Format::Avro,
            };
            let mut out: Box<dyn Write> = match &output {
                Some(path) => Box::new(BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("creating output {}", path.display()))?,
                )),
                None => Box::new(BufWriter::new(std::io::stdout().lock())),
            };
            let mut err = std::io::stderr().lock();
            let mut actions = match &actions {
                Some(path) => Some(BufReader::new(
                    std::fs::File::open(path)
                        .with_context(|| format!("opening actions {}", path.display()))?,
                )),
                None => None,
            };
            let summary = cx_sentinel::replay::replay_with_actions(
                config,
                BufReader::new(file),
                format,
                actions.as_mut().map(|a| a as &mut dyn std::io::BufRead),
                &mut out,
                &mut err,
                &now_ms,
                until.map(|u| match u {
                    Until::Now => now_ms(),
                    Until::At(t) => t,
                }),
            )
            .with_context(|| format!("replaying {}", input.display()))?;
            eprintln!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
