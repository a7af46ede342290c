//! `mqbridge` binary: parse the command line, load and validate the config,
//! run the gateway until SIGINT/SIGTERM; SIGHUP reloads the TLS files, the
//! acl_file, the password file and the JWT keys. Or `mqbridge passwd`,
//! which edits a password file.

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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Add or change a user in a Mosquitto-format password file ($7$,
    /// PBKDF2-SHA512), or delete one. The password is read from the terminal
    /// without echo, or as one line from stdin.
    Passwd {
        /// The password file (created with mode 0600 if missing).
        file: PathBuf,
        /// The user name.
        user: String,
        /// Delete the user instead.
        #[arg(long)]
        delete: bool,
        /// PBKDF2 iterations.
        #[arg(long, default_value_t = mqbridge::auth::password::DEFAULT_ITERATIONS)]
        iterations: u32,
        /// Read the password as one line from stdin, even from a terminal.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// Exit code for an invalid configuration (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Passwd {
        file,
        user,
        delete,
        iterations,
        password_stdin,
    }) = &args.command
    {
        return passwd::run(file, user, *delete, *iterations, *password_stdin);
    }
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
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match cfg.log_format() {
        mqbridge::config::LogFormat::Text => logs.init(),
        // Fields at the top level, not under "fields": what shippers index.
        mqbridge::config::LogFormat::Json => logs.json().flatten_event(true).init(),
    }
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

mod passwd {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    use std::path::Path;
    use std::process::ExitCode;

    use mqbridge::auth::passwd::{update, Change};

    pub fn run(
        file: &Path,
        user: &str,
        delete: bool,
        iterations: u32,
        from_stdin: bool,
    ) -> ExitCode {
        let change = if delete {
            Change::Delete
        } else {
            let password = if from_stdin || !std::io::stdin().is_terminal() {
                read_line()
            } else {
                prompt_twice()
            };
            match password {
                Ok(p) => Change::Set {
                    password: p.into_bytes(),
                    iterations,
                },
                Err(e) => {
                    eprintln!("mqbridge passwd: {e}");
                    return ExitCode::FAILURE;
                }
            }
        };
        match update(file, user, &change) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mqbridge passwd: {}", super::error_chain(&e));
                ExitCode::FAILURE
            }
        }
    }

    /// One line from stdin, without its line ending.
    fn read_line() -> Result<String, String> {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password: {e}"))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }

    /// Asks twice on the terminal with echo off.
    fn prompt_twice() -> Result<String, String> {
        let first = prompt("Password: ")?;
        let second = prompt("Reenter password: ")?;
        if first != second {
            return Err("passwords do not match".into());
        }
        Ok(first)
    }

    fn prompt(text: &str) -> Result<String, String> {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        eprint!("{text}");
        let _ = std::io::stderr().flush();
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).map_err(|e| format!("terminal: {e}"))?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        tcsetattr(&stdin, OptionalActions::Now, &quiet).map_err(|e| format!("terminal: {e}"))?;
        let line = read_line();
        let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
        eprintln!();
        line
    }
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
