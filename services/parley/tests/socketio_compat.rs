//! The official socket.io-client 4.8 (Node) against Parley, over WebSocket,
//! long-polling, and polling upgraded to WebSocket, authenticating with the
//! `jwt` cookie as a browser does. The scenario lives in
//! `tests-compat/compat.mjs`; `scripts/test.sh` installs Node.js and the pinned
//! client (`npm ci`).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn compat_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests-compat")
}

async fn run(transport: &str) {
    let dir = compat_dir();
    assert!(
        dir.join("node_modules/socket.io-client").is_dir(),
        "socket.io-client is not installed: run `npm ci` in tests-compat (scripts/test.sh does)"
    );
    let app = TestApp::spawn_with(Options::default().flag("--typing-timeout-ms", 300)).await;
    let run = tokio::process::Command::new("node")
        .arg("compat.mjs")
        .current_dir(&dir)
        .env("BASE_URL", &app.base)
        .env("TRANSPORT", transport)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the compatibility run finishes")
        .expect("node runs (install Node.js: scripts/test.sh does)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| {
            panic!("no report from compat.mjs\nstdout:\n{stdout}\nstderr:\n{stderr}")
        });
    assert_eq!(report["transport"], transport);
    assert_eq!(
        report["failed"],
        serde_json::json!([]),
        "{report}\nstderr:\n{stderr}"
    );
    assert!(report["passed"].as_array().unwrap().len() >= 17, "{report}");
    assert!(output.status.success(), "{report}");
}

#[tokio::test]
async fn official_client_over_websocket() {
    run("websocket").await;
}

#[tokio::test]
async fn official_client_over_long_polling() {
    run("polling").await;
}

#[tokio::test]
async fn official_client_upgrading_from_polling_to_websocket() {
    run("upgrade").await;
}
