//! The real binary as a child process: started on a config made for free ports, signalled, its metrics read.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::try_get;

pub struct Proc(pub Child, pub Option<std::path::PathBuf>);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        // No log line of any run may say a thread panicked.
        if let Some(log) = &self.1 {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("panicked") && !std::thread::panicking() {
                panic!("switchyard panicked:\n{text}");
            }
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// Starts `switchyard run` on the config `make(port, admin)` and waits until its admin `/healthz` answers.
/// Free ports are found by binding port 0 and closing it, which another process may take in between: a start
/// that fails is tried again with new ports.
pub async fn spawn_with(
    dir: &std::path::Path,
    make: impl Fn(u16, u16) -> String,
    stderr: impl Fn() -> Stdio,
) -> (Proc, u16, u16) {
    for _ in 0..5 {
        let (port, admin) = (free_port(), free_port());
        if port == admin {
            continue;
        }
        let path = dir.join("switchyard.toml");
        std::fs::write(&path, make(port, admin)).unwrap();
        let mut child = Proc(
            Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args(["run", "--config", path.to_str().unwrap(), "--workers", "2"])
                .stdout(Stdio::null())
                .stderr(stderr())
                .spawn()
                .unwrap(),
            None,
        );
        let admin_addr: SocketAddr = ([127, 0, 0, 1], admin).into();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((status, _)) = try_get(admin_addr, "/healthz").await {
                // 401: up, with an admin token. The answer must come from this child: another test's process
                // may hold the port this one picked, and this child then exits (or has exited) unable to bind.
                if (status == 200 || status == 401) && listens_on(child.0.id(), admin) {
                    return (child, port, admin);
                }
            }
            if matches!(child.0.try_wait(), Ok(Some(_))) || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("switchyard did not come up");
}

/// Does process `pid` hold the listening socket on `port` (IPv4)? Read from `/proc/net/tcp` and the process's
/// open files: a listening socket's inode, and a descriptor that links to it.
fn listens_on(pid: u32, port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let listening: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let listen = *fields.get(3)? == "0A";
            let inode = fields.get(9)?;
            (local_port == port && listen).then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| listening.iter().any(|s| target.as_os_str() == s.as_str()))
    })
}

pub async fn spawn(dir: &std::path::Path, make: impl Fn(u16, u16) -> String) -> (Proc, u16, u16) {
    let log = dir.join("stderr.log");
    let (mut proc, port, admin) = spawn_with(dir, make, || {
        Stdio::from(std::fs::File::create(&log).unwrap())
    })
    .await;
    proc.1 = Some(log);
    (proc, port, admin)
}

/// A config for [`spawn`]: the listener and admin ports it found, one pool `p` with one backend.
pub fn config_for(port: u16, admin: u16, backend: SocketAddr) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:{port}"
[admin]
address = "127.0.0.1:{admin}"
[[routes]]
pool = "p"
[pools.p]
backends = [{{ address = "{backend}" }}]
"#
    )
}

/// A config for [`spawn`]: one route to pool `p` over `backends`; `extra` lines go under `[pools.p]`.
pub fn binary_pool_config(port: u16, admin: u16, backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\n\
         [[routes]]\npool = \"p\"\n[pools.p]\nbackends = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// The binary running one pool `p` over `backends` (`extra` lines under `[pools.p]`), in a folder of its own.
pub struct PoolProxy {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub proxy: SocketAddr,
    pub admin: u16,
}

pub async fn spawn_pool(backends: &[SocketAddr], extra: &str) -> PoolProxy {
    spawn_pool_with(backends, extra, &[]).await
}

/// [`spawn_pool`] with `files` (name, content) written beside the config first (keys, tokens).
pub async fn spawn_pool_with(
    backends: &[SocketAddr],
    extra: &str,
    files: &[(&str, &str)],
) -> PoolProxy {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let (proc, port, admin) = spawn(dir.path(), |port, admin| {
        binary_pool_config(port, admin, backends, extra)
    })
    .await;
    PoolProxy {
        proc,
        dir,
        proxy: ([127, 0, 0, 1], port).into(),
        admin,
    }
}
