//! The command line: `run`, `check`, `hash-key`, `schema`, `fleet`.

use crate::config::LogFormat;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version,
    about = "An edge proxy for HTTP APIs, on Pingora."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `switchyard -c FILE` is `switchyard run -c FILE`.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load, validate and serve.
    Run(RunArgs),
    /// Validate the file only: every error as FILE:LINE:COL: message.
    Check {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Read an API key on stdin and print sha256:<hex> to put in the YAML.
    HashKey,
    /// Read /health from each node's admin listener (http://HOST:PORT) and compare their
    /// config hashes; exits non-zero when they differ or a node does not answer.
    Fleet {
        #[arg(required = true, value_name = "ADMIN_URL")]
        urls: Vec<String>,
    },
    /// Print the JSON Schema of the config file, for editors (yaml-language-server).
    Schema,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The YAML config file.
    #[arg(
        short = 'c',
        long = "config",
        default_value = "/etc/switchyard/switchyard.yaml"
    )]
    pub config: PathBuf,
    /// Run in the background (Pingora's daemon mode).
    #[arg(short = 'd', long)]
    pub daemon: bool,
    /// Take the listening sockets over from a running switchyard (graceful upgrade).
    #[arg(short = 'u', long)]
    pub upgrade: bool,
    /// The process log on stderr as text or JSON lines (wins over server.log_format).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl Cli {
    /// `--log-format`, if the command serves and it was given.
    pub fn log_format(&self) -> Option<LogFormat> {
        let args = match &self.command {
            Some(Command::Run(args)) => args,
            None => &self.run,
            Some(_) => return None,
        };
        args.log_format.map(|f| match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        })
    }
}
