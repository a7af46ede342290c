//! Durability across `kill -9`: a child process (this same test binary,
//! running the ignored `crash_child`) commits, reports it, and is SIGKILLed
//! without closing the store; the parent then reopens the directory.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::{enqueue, entry, put, record};
use crate::store::{Op, Store};

const DIR_ENV: &str = "MQBRIDGE_STORE_CRASH_CHILD_DIR";
const COMMITTED: &str = "CRASH-CHILD-COMMITTED";

#[test]
#[ignore = "child process of reopen_after_kill_9; does nothing when run alone"]
fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (store, _) = Store::open(&super::opts(dir)).unwrap();
        let first = vec![put("c"), enqueue("c", 1, entry("t", b"one"))];
        let second = vec![
            enqueue("c", 2, entry("t", b"two")),
            Op::AddIncomingQos2 {
                client_id: "c".into(),
                pkid: 9,
            },
        ];
        let a = store.submit(first).await.unwrap();
        let b = store.submit(second).await.unwrap();
        a.await.unwrap();
        b.await.unwrap();
        println!("{COMMITTED}");
        std::io::stdout().flush().unwrap();
        // Keep the store open until the parent kills us.
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    });
}

#[tokio::test]
async fn reopen_after_kill_9() {
    let dir = TempDir::new().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "store::tests::crash::crash_child",
            "--ignored",
            "--nocapture",
        ])
        .env(DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let committed = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l == COMMITTED);
    child.kill().unwrap(); // SIGKILL: no destructors, no clean shutdown
    child.wait().unwrap();
    assert!(committed, "child exited before reporting its commits");

    let (store, recovered) = Store::open(&super::opts(dir.path())).unwrap();
    assert_eq!(recovered.sessions.len(), 1);
    let s = &recovered.sessions[0];
    assert_eq!(s.record, record(3600));
    assert_eq!(
        s.index.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(s.incoming_qos2, vec![9]);
    assert_eq!(store.load_queue("c", u64::MAX).await.unwrap().len(), 2);
    store.close().await.unwrap();
}
