//! What the benches that need a ClickHouse share: a private server (scripts/clickhouse.sh,
//! Debian's 18.16 or `CLICKHOUSE_SERVER`) with its data in a directory of the caller's, on free
//! loopback ports, stopped when the handle is dropped (also when the bench panics).

use std::path::Path;
use std::process::{Command, Stdio};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/clickhouse.sh");

pub(crate) struct PrivateClickHouse {
    dir: String,
    /// `http://127.0.0.1:PORT`, the HTTP interface.
    pub(crate) url: String,
}

impl PrivateClickHouse {
    /// Starts the server on `dir` (created, or reused with what it holds) and returns once it
    /// answers.
    pub(crate) fn start(dir: &Path) -> Self {
        let (http, tcp) = (free_port(), free_port());
        let dir = dir.display().to_string();
        let started = Command::new(SCRIPT)
            .args(["start", &dir, &http.to_string(), &tcp.to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(
            started.success(),
            "scripts/clickhouse.sh start {dir}: {started}"
        );
        Self {
            dir,
            url: format!("http://127.0.0.1:{http}"),
        }
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT).args(["stop", &self.dir]).status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
