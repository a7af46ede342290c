//! One rule for a test that needs something outside the crate (RabbitMQ,
//! the Kafka-protocol broker, mosquitto_*, node, python paho): under CI (any
//! value of `CI` but empty, `0` or `false`) a missing one fails the test;
//! otherwise the test is recorded as skipped — a `SKIPPED` line on stdout
//! and in the file named by `MQBRIDGE_SKIP_LOG`, which scripts/test.sh
//! counts and prints at the end (a skipped test would otherwise show as a
//! plain `ok`).
//!
//! The brokers are shared by every test, in this binary and in others: a
//! test that uses one holds a shared [`Turn`], a test that stops, freezes or
//! blocks it holds the turn alone.

use std::time::Duration;

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Fails under CI, records a skip otherwise. Callers return right after.
pub fn missing(what: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    if in_ci() {
        panic!("{test}: {what} is required in CI (scripts/test.sh installs and starts it)");
    }
    let line = format!("SKIPPED: {test}: {what}");
    println!("{line}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("MQBRIDGE_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {what}");
        }
    }
}

/// Whether `program` can be started at all (`--help`, any exit status: the
/// mosquitto clients exit 1 even for that); records `what` as missing when not.
pub fn program(program: &str, what: &str) -> bool {
    let ok = std::process::Command::new(program)
        .arg("--help")
        .output()
        .is_ok();
    if !ok {
        missing(what);
    }
    ok
}

/// Whether `program args` runs and succeeds (in `dir`, if given); records
/// `what` as missing when it does not.
pub fn tool(program: &str, args: &[&str], dir: Option<&std::path::Path>, what: &str) -> bool {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let ok = cmd.output().is_ok_and(|o| o.status.success());
    if !ok {
        missing(what);
    }
    ok
}

/// A broker the tests share.
#[derive(Clone, Copy, Debug)]
pub enum Broker {
    RabbitMq,
    Kafka,
}

/// How a test uses a broker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Use {
    /// As it is: any number of tests at once.
    Shared,
    /// Stops, freezes or blocks it: no other test may use it meanwhile.
    Alone,
}

/// A test's turn on a broker, until dropped. An advisory lock on a file in
/// the temporary directory (closing the file releases it, also when the
/// test panics), so turns also hold between test binaries and between the
/// test runs of several checkouts on one machine.
pub struct Turn {
    _lock: std::fs::File,
    how: Use,
}

impl Turn {
    pub fn how(&self) -> Use {
        self.how
    }
}

/// Waits for a turn on `broker`.
pub async fn turn(broker: Broker, how: Use) -> Turn {
    let name = match broker {
        Broker::RabbitMq => "rabbitmq",
        Broker::Kafka => "kafka",
    };
    let path = std::env::temp_dir().join(format!("mqbridge-test-{name}.lock"));
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        match how {
            Use::Shared => f.lock_shared(),
            Use::Alone => f.lock(),
        }
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
        Turn { _lock: f, how }
    })
    .await
    .expect("lock task")
}

/// The Kafka-protocol broker's address (`MQBRIDGE_TEST_KAFKA`).
pub fn kafka_addr() -> String {
    std::env::var("MQBRIDGE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The Kafka-protocol broker's address and a turn on it, or `None` (after
/// [`missing`]) when it does not answer.
pub async fn kafka(how: Use) -> Option<(String, Turn)> {
    let turn = turn(Broker::Kafka, how).await;
    let addr = kafka_addr();
    let up = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&addr),
    )
    .await;
    if matches!(up, Ok(Ok(_))) {
        return Some((addr, turn));
    }
    missing(&format!(
        "a Kafka-protocol broker at {addr} (MQBRIDGE_TEST_KAFKA)"
    ));
    None
}
