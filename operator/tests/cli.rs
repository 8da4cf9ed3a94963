//! The `parley-operator` binary: `run` serves its health and metrics and stops
//! cleanly on SIGTERM; misconfiguration fails fast with a clear message.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_parley-operator");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A kubeconfig for an API server that does not exist (nothing listens on
/// port 1): the client is built, every watch fails and is retried.
fn kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n\
         clusters: [{name: nowhere, cluster: {server: 'http://127.0.0.1:1'}}]\n\
         users: [{name: nobody, user: {token: not-a-real-token}}]\n\
         contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody, namespace: default}}]\n",
    )
    .unwrap();
    path
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Some((code, body))
}

fn wait_for(port: u16, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(answer) = get(port, path) {
            return answer;
        }
        assert!(Instant::now() < deadline, "{path} never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn run_serves_health_and_metrics_and_exits_cleanly_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("parley-operator-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", kubeconfig(&dir))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("PARLEY_OPERATOR_NAMESPACE", "parley")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    assert_eq!(wait_for(port, "/livez"), (200, "ok".into()));
    // Not ready while the ChatCluster cache cannot sync (no API server).
    assert_eq!(get(port, "/readyz").unwrap(), (503, "starting".into()));
    let (code, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("parley_operator_leader 1"), "{metrics}");
    assert!(terminate(&mut child).success());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn leader_election_without_a_lease_namespace_fails_fast_and_says_why() {
    let dir = std::env::temp_dir().join(format!("parley-operator-le-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = Command::new(BIN)
        .args([
            "run",
            "--leader-election",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .env("KUBECONFIG", kubeconfig(&dir))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("POD_NAMESPACE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("POD_NAMESPACE"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
