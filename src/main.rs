//! The `cx-sentinel` binary: parses the command line and hands off to the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use cx_sentinel::codec::Format;
use cx_sentinel::config::Config;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

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
    },
    /// Validate a configuration file; exits non-zero naming the key and the problem.
    CheckConfig {
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
    },
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
            let summary = cx_sentinel::replay::replay(
                config,
                BufReader::new(file),
                format,
                &mut out,
                &mut err,
                &now_ms,
            )
            .with_context(|| format!("replaying {}", input.display()))?;
            eprintln!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
