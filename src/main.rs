use clap::Parser;

/// mimalloc instead of glibc's malloc: the proxy allocates and frees small buffers on every
/// request, and a profile showed ~10 % of its CPU in glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Read;
use std::process::ExitCode;
use switchyard::cli::{Cli, Command};
use switchyard::{config, serve};

fn main() -> ExitCode {
    let cli = Cli::parse();
    switchyard::process_log::init(cli.log_format());
    let code = match cli.command {
        Some(Command::Check { config }) => check(&config),
        Some(Command::HashKey) => hash_key(),
        Some(Command::Fleet { urls }) => fleet(&urls),
        Some(Command::Schema) => schema(),
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
    };
    switchyard::logsink::flush(std::time::Duration::from_secs(2));
    code
}

fn run(args: switchyard::cli::RunArgs) -> ExitCode {
    let opts = serve::RunOptions {
        config: args.config,
        daemon: args.daemon,
        upgrade: args.upgrade,
    };
    match serve::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let files =
        |c: &config::Config<config::Lenient>| switchyard::tls::check_files(c, path.parent());
    match config::load_file(path, Some(&files)) {
        Ok(l) => {
            let c = &l.config;
            println!(
                "{}: ok ({} listeners, {} pools, {} routes; sha256 {})",
                path.display(),
                c.listeners.len(),
                c.pools.len(),
                c.routes.len(),
                &l.hash[..12]
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}", e.render(&path.display().to_string()));
            ExitCode::FAILURE
        }
    }
}

fn fleet(urls: &[String]) -> ExitCode {
    match switchyard::fleet::run(urls) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn schema() -> ExitCode {
    match serde_json::to_string_pretty(&config::schema::json_schema()) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot write the schema: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hash_key() -> ExitCode {
    let mut key = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut key) {
        eprintln!("cannot read the key from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let key = key.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        eprintln!("no key on stdin");
        return ExitCode::FAILURE;
    }
    println!("sha256:{}", config::hash_bytes(key.as_bytes()));
    ExitCode::SUCCESS
}
