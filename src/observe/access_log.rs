//! The access log: one line per request, JSON or text, written by its own task so the request path never waits
//! on I/O. The request path hands finished entries over a bounded channel; when the writer falls behind and
//! the channel is full, lines are dropped and counted in `switchyard_access_log_dropped_total`.

pub(crate) use crate::config::{AccessLogSettings, Format};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::Method;
use prometheus::IntCounter;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 8192;

/// One request, as logged.
#[derive(Debug)]
#[doc(hidden)]
pub struct Entry {
    pub time: SystemTime,
    pub client: IpAddr,
    pub method: Method,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub pool: String,
    pub backend: String,
    pub attempts: u32,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Why the proxy answered itself (`queue_full`, `no_backend`, …); empty when an upstream answered.
    pub reason: &'static str,
    /// The request's ID and trace ID (`[request_id]`); empty without.
    pub request_id: String,
    pub trace_id: String,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    client: String,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    status: u16,
    pool: &'a str,
    backend: &'a str,
    attempts: u32,
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    request_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    trace_id: &'a str,
}

impl Entry {
    #[doc(hidden)]
    pub fn write(&self, format: Format, out: &mut Vec<u8>) {
        let time = humantime::format_rfc3339_millis(self.time).to_string();
        let duration_ms = (self.duration.as_secs_f64() * 1e6).round() / 1e3;
        match format {
            Format::Json => {
                let line = JsonLine {
                    time,
                    client: self.client.to_string(),
                    method: self.method.as_str(),
                    host: &self.host,
                    path: &self.path,
                    status: self.status,
                    pool: &self.pool,
                    backend: &self.backend,
                    attempts: self.attempts,
                    duration_ms,
                    bytes_in: self.bytes_in,
                    bytes_out: self.bytes_out,
                    reason: self.reason,
                    request_id: &self.request_id,
                    trace_id: &self.trace_id,
                };
                if serde_json::to_writer(&mut *out, &line).is_ok() {
                    out.push(b'\n');
                }
            }
            Format::Text => {
                use std::io::Write;
                let _ = writeln!(
                    out,
                    "{time} {} \"{} {}{}\" {} pool={} backend={} attempts={} duration_ms={duration_ms} bytes_in={} bytes_out={}{}{}{}{}{}{}",
                    self.client,
                    self.method,
                    if self.host.is_empty() {
                        "-"
                    } else {
                        &self.host
                    },
                    self.path.escape_debug(),
                    self.status,
                    self.pool,
                    self.backend,
                    self.attempts,
                    self.bytes_in,
                    self.bytes_out,
                    if self.reason.is_empty() {
                        ""
                    } else {
                        " reason="
                    },
                    self.reason,
                    if self.request_id.is_empty() {
                        ""
                    } else {
                        " request_id="
                    },
                    self.request_id,
                    if self.trace_id.is_empty() {
                        ""
                    } else {
                        " trace_id="
                    },
                    self.trace_id,
                );
            }
        }
    }
}

/// The sending side of an access log; cheap to share.
pub(crate) struct AccessLog {
    tx: mpsc::Sender<Entry>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Opens the destination and starts the writer task (inside a tokio runtime).
    pub(crate) async fn start(
        settings: &AccessLogSettings,
        dropped: IntCounter,
    ) -> io::Result<Arc<Self>> {
        let out: Box<dyn AsyncWrite + Send + Unpin> = match &settings.path {
            None => Box::new(tokio::io::stdout()),
            Some(path) => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("cannot open access log {}: {e}", path.display()),
                        )
                    })?,
            ),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(rx, BufWriter::new(out), settings.format));
        Ok(Arc::new(Self { tx, dropped }))
    }

    /// Queues one entry; drops (and counts) it if the writer is behind.
    pub(crate) fn record(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.inc();
        }
    }
}

async fn write_lines(
    mut rx: mpsc::Receiver<Entry>,
    mut out: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    format: Format,
) {
    let mut buf = Vec::with_capacity(512);
    while let Some(entry) = rx.recv().await {
        let mut next = Some(entry);
        // Write everything queued, then flush once.
        while let Some(e) = next {
            buf.clear();
            e.write(format, &mut buf);
            if out.write_all(&buf).await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.flush().await;
}

/// The access log for `settings`: the one already running when its settings are unchanged, else a new one.
pub(crate) async fn open(
    settings: Option<&AccessLogSettings>,
    running: Option<&(AccessLogSettings, Arc<AccessLog>)>,
    dropped: &IntCounter,
) -> io::Result<Option<(AccessLogSettings, Arc<AccessLog>)>> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    if let Some((s, log)) = running.filter(|(s, _)| s == settings) {
        return Ok(Some((s.clone(), Arc::clone(log))));
    }
    let log = AccessLog::start(settings, dropped.clone()).await?;
    Ok(Some((settings.clone(), log)))
}

/// What the proxy knows of a request for its log line before the response ends.
pub(crate) struct Pending {
    pub(crate) log: Arc<AccessLog>,
    pub(crate) time: SystemTime,
    pub(crate) client: IpAddr,
    pub(crate) method: Method,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) bytes_in: Arc<AtomicU64>,
    pub(crate) pool: String,
    pub(crate) backend: String,
    pub(crate) attempts: u32,
    pub(crate) status: u16,
    pub(crate) reason: &'static str,
    pub(crate) request_id: String,
    pub(crate) trace_id: String,
}

impl Pending {
    /// Sends the line.
    pub(crate) fn finish(self, duration: Duration, bytes_out: u64) {
        let entry = Entry {
            time: self.time,
            client: self.client,
            method: self.method,
            host: self.host,
            path: self.path,
            status: self.status,
            pool: self.pool,
            backend: self.backend,
            attempts: self.attempts,
            duration,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            reason: self.reason,
            request_id: self.request_id,
            trace_id: self.trace_id,
        };
        self.log.record(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            client: "10.1.2.3".parse().unwrap(),
            method: Method::GET,
            host: "api.example.com".into(),
            path: "/v1/items?q=\"x\"".into(),
            status: 200,
            pool: "api".into(),
            backend: "127.0.0.1:9001".into(),
            attempts: 2,
            duration: Duration::from_micros(1500),
            bytes_in: 0,
            bytes_out: 42,
            reason: "",
            request_id: String::new(),
            trace_id: String::new(),
        }
    }

    #[test]
    fn json_line_has_every_field() {
        let mut out = Vec::new();
        entry().write(Format::Json, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["client"], "10.1.2.3");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["host"], "api.example.com");
        assert_eq!(v["path"], "/v1/items?q=\"x\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["pool"], "api");
        assert_eq!(v["backend"], "127.0.0.1:9001");
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["bytes_in"], 0);
        assert_eq!(v["bytes_out"], 42);
        assert!(out.ends_with(b"\n"));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = mpsc::channel(2);
        let dropped = IntCounter::new("t", "t").unwrap();
        let log = AccessLog {
            tx,
            dropped: dropped.clone(),
        };
        for _ in 0..5 {
            log.record(entry());
        }
        assert_eq!(dropped.get(), 3);
    }

    #[test]
    fn text_line() {
        let mut out = Vec::new();
        entry().write(Format::Text, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2023-11-14T22:13:20.000Z 10.1.2.3 \"GET api.example.com/v1/items?q=\\\"x\\\"\" 200 pool=api \
             backend=127.0.0.1:9001 attempts=2 duration_ms=1.5 bytes_in=0 bytes_out=42\n"
        );
    }
}
