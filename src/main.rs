//! `mqbridge` binary: parse the command line, load and validate the config,
//! run the gateway until SIGINT/SIGTERM; SIGHUP reloads the TLS files and
//! the acl_file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// MQTT gateway with durable sessions, bridged to Kafka and RabbitMQ.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file (built-in defaults apply without it; env
    /// `MQBRIDGE__<SECTION>__<KEY>` overrides both).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

/// Exit code for an invalid configuration (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match load_and_validate(&args) {
        Ok(c) => c,
        Err(errors) => {
            // Every problem, one per line, so one run shows all there is to fix.
            for e in &errors {
                eprintln!("mqbridge: invalid configuration: {}", error_chain(e));
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| cfg.env_filter());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mqbridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        let (tx, reloads) = tokio::sync::mpsc::channel(1);
        tokio::spawn(forward_hangups(tx));
        mqbridge::app::run_reloading(cfg, shutdown_signal(), reloads).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain = error_chain(&e);
            tracing::error!(error = %chain, "mqbridge failed");
            eprintln!("mqbridge: {chain}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration, or every problem with it. Runs before anything is
/// opened or bound.
fn load_and_validate(
    args: &Args,
) -> Result<mqbridge::config::Validated, Vec<mqbridge::config::ConfigError>> {
    let cfg = mqbridge::config::load(args.config.as_deref()).map_err(|e| vec![e])?;
    cfg.validate()
}

/// `e` and its sources, outermost first: "binding MQTT listener on ...:
/// Address in use".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Sends one reload request per SIGHUP (several in a row make one).
async fn forward_hangups(tx: tokio::sync::mpsc::Sender<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reload is off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let _ = tx.try_send(());
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
