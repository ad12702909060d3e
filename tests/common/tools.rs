//! Real servers and tools the tests start: found on the PATH, required in CI (`SWITCHYARD_REQUIRE_TOOLS`),
//! skipped with a note elsewhere. A Redis of the test's own on a free loopback port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// The tool's path; `None` (the test skips) when it is not installed, unless CI requires it.
pub fn require(tool: &str) -> Option<PathBuf> {
    let found = which(tool);
    if found.is_none() {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_TOOLS").is_none(),
            "{tool} is required (SWITCHYARD_REQUIRE_TOOLS is set) but not installed"
        );
        eprintln!("SKIPPED: {tool} is not installed (.ci/run installs it with apt-get)");
    }
    found
}

/// A `redis-server` of the test's own: loopback, a free port, no persistence; stopped (by its PID) when dropped.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    binary: PathBuf,
}

impl Redis {
    /// Starts one, or `None` when redis-server is not installed (and not required).
    pub async fn start() -> Option<Self> {
        let binary = require("redis-server")?;
        let port = super::free_port();
        let mut redis = Self {
            child: None,
            port,
            binary,
        };
        redis.run().await;
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn run(&mut self) {
        let child = Command::new(&self.binary)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let up = super::eventually(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        assert!(up, "redis-server did not start on port {}", self.port);
    }

    /// Kills it (its data goes with it).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.run().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
