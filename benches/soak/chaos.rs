//! The chaos: at moments a seeded RNG picks, something breaks, and later (also picked) it mends. The rules keep
//! what the load's judgement assumes: of the four `web` backends at most two are impaired at once (killed,
//! failing or drained: a slow one still answers; a mended one counts as impaired for [`RECOVERY`] more, the
//! time the proxy may take to see it back — health checks rising, a circuit's open period running out), and
//! of each other pool's backends at most one is down.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::backends::{Backend, FAILING, NORMAL, SLOW};
use crate::common::{Dns, Pki, send, write_atomically};
use crate::rng::Rng;

/// Where everything is, and the config file made from it.
pub struct Layout {
    pub dir: PathBuf,
    pub plain: u16,
    pub tls: u16,
    pub admin: u16,
    pub dns: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub web: Vec<SocketAddr>,
    pub ws: Vec<SocketAddr>,
    pub grpc: Vec<SocketAddr>,
}

/// How long a mended backend still counts as impaired: two health checks (250 ms apart) and the longest open
/// circuit (4 s).
const RECOVERY: Duration = Duration::from_secs(5);

pub const SRV_NAME: &str = "_http._tcp.soak.test";
pub const CERT_NAMES: &[&str] = &["soak.test", "grpc.soak"];

impl Layout {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("switchyard.toml")
    }

    /// The config with the `web` pool's algorithm and weights as given.
    pub fn render(&self, algorithm: &str, weights: &[u64]) -> String {
        let list = |addrs: &[SocketAddr], weights: &[u64]| {
            addrs
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    format!(
                        "{{ address = \"{a}\", weight = {} }}",
                        weights.get(i).unwrap_or(&1)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let checks = "interval = \"250ms\"\ntimeout = \"200ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2";
        let breaker = "failure_threshold = 5\nopen_duration = \"1s\"\nmax_open_duration = \"4s\"";
        format!(
            r#"[[listeners]]
address = "127.0.0.1:{plain}"

[[listeners]]
address = "127.0.0.1:{tls}"
[listeners.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]

[admin]
address = "127.0.0.1:{admin}"

[resolver]
nameservers = ["{dns}"]
timeout = "300ms"

[[routes]]
host = "dns.soak"
pool = "dns"

[[routes]]
host = "ws.soak"
pool = "ws"

[[routes]]
host = "grpc.soak"
pool = "grpc"

[[routes]]
pool = "web"

[pools.web]
algorithm = "{algorithm}"
backends = [{web}]
[pools.web.health_check]
{checks}
[pools.web.circuit_breaker]
{breaker}
[pools.web.timeouts]
request = "3s"
[pools.web.retry]
max_retries = 2
budget_percent = 100

[pools.dns]
discovery = {{ type = "dns_srv", name = "{SRV_NAME}", refresh = "500ms" }}
[pools.dns.health_check]
{checks}
[pools.dns.retry]
max_retries = 2
budget_percent = 100

[pools.ws]
backends = [{ws}]
[pools.ws.health_check]
type = "tcp"
{checks}

[pools.grpc]
protocol = "h2c"
backends = [{grpc}]
[pools.grpc.health_check]
{checks}
"#,
            plain = self.plain,
            tls = self.tls,
            admin = self.admin,
            dns = self.dns,
            cert = self.cert.display(),
            key = self.key.display(),
            web = list(&self.web, weights),
            ws = list(&self.ws, &[]),
            grpc = list(&self.grpc, &[]),
        )
    }
}

/// Broken files, each refused on reload with the file, line and field named.
const INVALID: &[&str] = &[
    "\n[pools.web\n",
    "\n[pools.broken]\nbackends = [{ address = \"127.0.0.1:1\" }]\nretries = 3\n",
    "\n[[routes]]\npath_prefix = \"/nowhere\"\npool = \"missing\"\n",
];

/// Something to undo at a moment.
enum Mend {
    Restart(&'static str),
    Normal(&'static str),
    Enable(&'static str),
    ValidConfig,
}

pub struct Chaos {
    pub layout: Layout,
    pub backends: Vec<Backend>,
    pub dns_backends: Vec<SocketAddr>,
    pub dns: Dns,
    pub pki: Pki,
    pub pid: u32,
    pub rng: Rng,
    pub events: BTreeMap<&'static str, u64>,
    mends: Vec<(Instant, Mend)>,
    drained: Vec<&'static str>,
    recovering: BTreeMap<&'static str, Instant>,
    config_broken: bool,
    /// What should be running at the end: the last valid config's algorithm, certificate and DNS answer.
    pub algorithm: &'static str,
    pub certificate: Vec<u8>,
    pub answered: Vec<SocketAddr>,
}

impl Chaos {
    pub fn new(
        layout: Layout,
        backends: Vec<Backend>,
        dns_backends: Vec<SocketAddr>,
        dns: Dns,
        pki: Pki,
        pid: u32,
        seed: u64,
    ) -> Self {
        Self {
            layout,
            backends,
            dns_backends,
            dns,
            pki,
            pid,
            rng: Rng::new(seed),
            events: BTreeMap::new(),
            mends: Vec::new(),
            drained: Vec::new(),
            recovering: BTreeMap::new(),
            config_broken: false,
            algorithm: "round_robin",
            certificate: Vec::new(),
            answered: Vec::new(),
        }
    }

    /// The DNS answer: the `dns` backends at these indexes.
    pub fn answer(&mut self, which: &[usize]) {
        self.answered = which.iter().map(|&i| self.dns_backends[i]).collect();
        let records = which
            .iter()
            .map(|&i| (1, self.dns_backends[i].port(), "node.soak.test".to_owned()))
            .collect();
        self.dns.set(|z| {
            z.a.insert("node.soak.test".into(), vec![[127, 0, 0, 1].into()]);
            z.srv.insert(SRV_NAME.into(), records);
        });
    }

    fn backend(&mut self, name: &str) -> &mut Backend {
        self.backends.iter_mut().find(|b| b.name == name).unwrap()
    }

    fn impaired(&self, b: &Backend) -> bool {
        !b.alive()
            || b.mode.load(std::sync::atomic::Ordering::SeqCst) == FAILING
            || self.drained.contains(&b.name)
            || self
                .recovering
                .get(b.name)
                .is_some_and(|until| Instant::now() < *until)
    }

    /// A `web` backend that may be impaired now, leaving two healthy ones.
    fn impairable(&mut self) -> Option<&'static str> {
        let web: Vec<&Backend> = self
            .backends
            .iter()
            .filter(|b| b.name.starts_with("web"))
            .collect();
        if web.iter().filter(|b| self.impaired(b)).count() >= 2 {
            return None;
        }
        let healthy: Vec<&'static str> = web
            .iter()
            .filter(|b| !self.impaired(b))
            .map(|b| b.name)
            .collect();
        Some(*self.rng.pick(&healthy))
    }

    fn later(&mut self, low_ms: u64, high_ms: u64, mend: Mend) {
        let at = Instant::now() + Duration::from_millis(self.rng.range(low_ms, high_ms));
        self.mends.push((at, mend));
    }

    fn count(&mut self, what: &'static str) {
        *self.events.entry(what).or_default() += 1;
    }

    /// Runs until `until`, then mends everything.
    pub async fn run(&mut self, until: Instant) {
        let mut next = Instant::now() + Duration::from_millis(self.rng.range(300, 2_000));
        while Instant::now() < until {
            let due = self
                .mends
                .iter()
                .map(|m| m.0)
                .min()
                .map_or(next, |m| m.min(next))
                .min(until);
            tokio::time::sleep_until(due.into()).await;
            let now = Instant::now();
            let (ready, waiting): (Vec<_>, Vec<_>) = self.mends.drain(..).partition(|m| m.0 <= now);
            self.mends = waiting;
            for (_, mend) in ready {
                self.mend(mend).await;
            }
            if now >= next && now < until {
                self.strike().await;
                next = Instant::now() + Duration::from_millis(self.rng.range(300, 2_000));
            }
        }
        for (_, mend) in std::mem::take(&mut self.mends) {
            self.mend(mend).await;
        }
    }

    async fn mend(&mut self, mend: Mend) {
        if let Mend::Restart(name) | Mend::Normal(name) | Mend::Enable(name) = mend {
            self.recovering.insert(name, Instant::now() + RECOVERY);
        }
        match mend {
            Mend::Restart(name) => self.backend(name).restart().await,
            Mend::Normal(name) => self
                .backend(name)
                .mode
                .store(NORMAL, std::sync::atomic::Ordering::SeqCst),
            Mend::Enable(name) => {
                self.admin("enable", name).await;
                self.drained.retain(|n| *n != name);
            }
            Mend::ValidConfig => self.write_valid(),
        }
    }

    async fn admin(&self, action: &str, name: &str) {
        let Some(b) = self.backends.iter().find(|b| b.name == name) else {
            return;
        };
        let path = format!("/api/pools/web/backends/{}/{action}", b.addr);
        let admin: SocketAddr = ([127, 0, 0, 1], self.layout.admin).into();
        let (status, body) = send(admin, "POST", &path, "").await;
        assert!(status.is_success(), "{action} {name}: {status} {body}");
    }

    fn write_valid(&mut self) {
        let algorithm = *self
            .rng
            .pick(&["round_robin", "least_connections", "peak_ewma"]);
        let weights: Vec<u64> = (0..self.layout.web.len())
            .map(|_| self.rng.range(1, 6))
            .collect();
        write_atomically(
            &self.layout.config_path(),
            self.layout.render(algorithm, &weights),
        );
        self.config_broken = false;
        self.algorithm = algorithm;
    }

    async fn strike(&mut self) {
        match self.rng.range(0, 13) {
            0 | 1 => {
                if let Some(name) = self.impairable() {
                    self.backend(name).kill();
                    self.later(500, 5_000, Mend::Restart(name));
                    self.count("web backend killed, restarted 0.5-5 s later");
                }
            }
            2 => {
                let name = *self.rng.pick(&["web-1", "web-2", "web-3", "web-4"]);
                if self
                    .backend(name)
                    .mode
                    .compare_exchange(
                        NORMAL,
                        SLOW,
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                    )
                    .is_ok()
                {
                    self.later(2_000, 10_000, Mend::Normal(name));
                    self.count("web backend slow (150 ms) for 2-10 s");
                }
            }
            3 => {
                if let Some(name) = self.impairable() {
                    self.backend(name)
                        .mode
                        .store(FAILING, std::sync::atomic::Ordering::SeqCst);
                    self.later(2_000, 10_000, Mend::Normal(name));
                    self.count("web backend answers 503 for 2-10 s");
                }
            }
            4 => {
                let pool = *self.rng.pick(&["ws", "grpc"]);
                let alive: Vec<&'static str> = self
                    .backends
                    .iter()
                    .filter(|b| b.name.starts_with(pool) && b.alive())
                    .map(|b| b.name)
                    .collect();
                if alive.len() == 2 {
                    let name = *self.rng.pick(&alive);
                    self.backend(name).kill();
                    self.later(500, 4_000, Mend::Restart(name));
                    self.count(if pool == "ws" {
                        "WebSocket backend killed"
                    } else {
                        "stream backend killed"
                    });
                }
            }
            5 => {
                self.write_valid();
                self.count("config rewritten (valid)");
            }
            6 if !self.config_broken => {
                let broken = *self.rng.pick(INVALID);
                let text = format!(
                    "{}{broken}",
                    std::fs::read_to_string(self.layout.config_path()).unwrap_or_default()
                );
                write_atomically(&self.layout.config_path(), text);
                self.config_broken = true;
                self.later(500, 3_000, Mend::ValidConfig);
                self.count("config rewritten (invalid), put right 0.5-3 s later");
            }
            7 => {
                for _ in 0..self.rng.range(2, 7) {
                    let _ = std::process::Command::new("kill")
                        .args(["-HUP", &self.pid.to_string()])
                        .status();
                    tokio::time::sleep(Duration::from_millis(self.rng.range(0, 50))).await;
                }
                self.count("SIGHUP burst (2-6)");
            }
            8 => {
                let admin: SocketAddr = ([127, 0, 0, 1], self.layout.admin).into();
                for _ in 0..self.rng.range(2, 7) {
                    let (status, body) = send(admin, "POST", "/api/reload", "").await;
                    let expected = if self.config_broken { 400 } else { 200 };
                    assert_eq!(status.as_u16(), expected, "POST /api/reload: {body}");
                }
                self.count("POST /api/reload burst (2-6)");
            }
            9 => {
                let mut which: Vec<usize> = (0..self.dns_backends.len())
                    .filter(|_| self.rng.range(0, 2) == 0)
                    .collect();
                if which.is_empty() {
                    which.push(self.rng.range(0, self.dns_backends.len() as u64) as usize);
                }
                self.answer(&which);
                self.count("DNS answer changed");
            }
            10 => {
                self.certificate = self.pki.issue("soak", CERT_NAMES).der;
                self.count("TLS certificate rotated");
            }
            11 => {
                if let Some(name) = self.impairable() {
                    self.admin("drain", name).await;
                    self.drained.push(name);
                    self.later(1_000, 6_000, Mend::Enable(name));
                    self.count("web backend drained via the admin API, enabled 1-6 s later");
                }
            }
            _ => {
                let name = *self.rng.pick(&["web-1", "web-2", "web-3", "web-4"]);
                if self
                    .backend(name)
                    .mode
                    .load(std::sync::atomic::Ordering::SeqCst)
                    == SLOW
                {
                    self.backend(name)
                        .mode
                        .store(NORMAL, std::sync::atomic::Ordering::SeqCst);
                }
                self.count("quiet moment");
            }
        }
    }
}
