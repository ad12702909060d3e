//! JSON in and out. The first byte chooses:
//!
//! * even: the rest is the body of `POST /api/pools/{pool}/backends/{address}/weight`, read by the admin
//!   handler's own reader (`read_weight`, given a real hyper request body over an in-memory HTTP/1 connection).
//!   Nothing may panic; a body it accepts is a JSON object with just an integer `weight` from 0 to `MAX_WEIGHT`
//!   (never serde's array form of it, `[N]`), the weight it returns; and such an object is accepted (unless it
//!   names `weight` twice).
//! * odd: the rest makes an access-log entry (method, host, path, pool, backend, request and trace IDs, any
//!   numbers), written by the log's own line writer. The JSON line is one line of valid JSON whose fields give the
//!   entry back exactly (the time to the millisecond); the text line is written without a panic.
#![no_main]

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use http::{Method, Response};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;

use switchyard::config::{Format, MAX_WEIGHT};
use switchyard::observe::access_log::Entry;

thread_local! {
    static RUNTIME: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
}

/// What `read_weight` makes of `body`, sent as a request with that `Content-Length`.
async fn read_weight(body: &[u8]) -> std::result::Result<u32, String> {
    let outcome = Rc::new(RefCell::new(None));
    let service = {
        let outcome = Rc::clone(&outcome);
        service_fn(move |req| {
            let outcome = Rc::clone(&outcome);
            async move {
                let read = switchyard::admin::read_weight(req).await;
                outcome.borrow_mut().replace(read);
                Ok::<_, std::convert::Infallible>(Response::new(String::new()))
            }
        })
    };
    // Room for the whole request and the answer: neither side waits for the other.
    let (mut client, server) = tokio::io::duplex(body.len() + 1024);
    // `half_close`: the client shuts its side once the request is out, and still gets its answer.
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    let send = async move {
        let head = format!(
            "POST /api/pools/web/backends/127.0.0.1:1/weight HTTP/1.1\r\nhost: 127.0.0.1\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        client.write_all(head.as_bytes()).await?;
        client.write_all(body).await?;
        client.shutdown().await?;
        // Held open until the server is done with it.
        Ok::<_, std::io::Error>(client)
    };
    let (served, sent) = tokio::join!(conn, send);
    served.expect("a well-formed request is served");
    drop(sent.expect("the request fits in the pipe"));
    let read = outcome.borrow_mut().take();
    read.expect("the handler ran")
}

fn check_weight(body: &[u8]) {
    let read = RUNTIME.with(|rt| rt.block_on(read_weight(body)));
    // What the handler should make of the body: `Some(n)` for a JSON object with a single integer `weight`.
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let object = parsed.as_ref().and_then(Value::as_object);
    let only_weight = object
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("weight"))
        .and_then(Value::as_i64);
    match read {
        Ok(w) => {
            assert!(w <= MAX_WEIGHT, "weight {w} accepted");
            assert!(
                body.len() <= 4096,
                "a body of {} bytes accepted",
                body.len()
            );
            assert_eq!(only_weight, Some(i64::from(w)), "accepted {body:?} as {w}");
        }
        Err(e) => match only_weight {
            Some(n) if (0..=i64::from(MAX_WEIGHT)).contains(&n) && body.len() <= 4096 => {
                assert!(e.contains("duplicate field"), "refused {body:?}: {e}");
            }
            _ => {}
        },
    }
}

/// The last date RFC 3339 (and the log's time format) can write: 9999-12-31T23:59:59.999Z.
const LAST_SECOND: u64 = 253_402_300_799;

/// Some of the codes a log line's `reason` takes (`ProxyError::code`), and none.
const REASONS: &[&str] = &[
    "",
    "no_route",
    "malformed",
    "no_backend",
    "queue_full",
    "bad_host",
    "protocol",
];

fn entry(u: &mut Unstructured) -> Result<Entry> {
    let method = Method::from_bytes(u.arbitrary::<&[u8]>()?).unwrap_or(Method::GET);
    let client = if u.arbitrary()? {
        IpAddr::from(u.arbitrary::<[u8; 4]>()?)
    } else {
        IpAddr::from(u.arbitrary::<[u8; 16]>()?)
    };
    // Any time the clock can show from 1970 to the year 9999 (outside it the time cannot be written at all).
    let secs = u.int_in_range(0..=LAST_SECOND)?;
    let time = SystemTime::UNIX_EPOCH + Duration::new(secs, u.int_in_range(0..=999_999_999)?);
    Ok(Entry {
        time,
        client,
        method,
        host: u.arbitrary()?,
        path: u.arbitrary()?,
        status: u.arbitrary()?,
        pool: u.arbitrary()?,
        backend: u.arbitrary()?,
        attempts: u.arbitrary()?,
        duration: Duration::new(u.arbitrary()?, u.int_in_range(0..=999_999_999)?),
        bytes_in: u.arbitrary()?,
        bytes_out: u.arbitrary()?,
        reason: u.choose(REASONS)?,
        request_id: u.arbitrary()?,
        trace_id: u.arbitrary()?,
    })
}

fn check_log_line(data: &[u8]) {
    let Ok(entry) = entry(&mut Unstructured::new(data)) else {
        return;
    };
    let mut text = Vec::new();
    entry.write(Format::Text, &mut text);
    assert!(text.ends_with(b"\n"));

    let mut out = Vec::new();
    entry.write(Format::Json, &mut out);
    let line = out
        .strip_suffix(b"\n")
        .expect("a JSON line ends with a newline");
    assert!(
        !line.contains(&b'\n'),
        "a JSON line broken in two: {line:?}"
    );
    let v: Value = serde_json::from_slice(line).expect("a JSON line is valid JSON");
    let str_field = |name: &str| v[name].as_str().unwrap_or_else(|| panic!("{name} in {v}"));
    let u64_field = |name: &str| v[name].as_u64().unwrap_or_else(|| panic!("{name} in {v}"));

    let time = humantime::parse_rfc3339(str_field("time")).expect("an RFC 3339 time");
    let since = entry
        .time
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970");
    let millis = Duration::from_millis(u64::try_from(since.as_millis()).expect("before 9999"));
    assert_eq!(time, SystemTime::UNIX_EPOCH + millis, "time");
    assert_eq!(
        str_field("client").parse::<IpAddr>().ok(),
        Some(entry.client)
    );
    assert_eq!(str_field("method"), entry.method.as_str());
    assert_eq!(str_field("host"), entry.host);
    assert_eq!(str_field("path"), entry.path);
    assert_eq!(str_field("pool"), entry.pool);
    assert_eq!(str_field("backend"), entry.backend);
    assert_eq!(u64_field("status"), u64::from(entry.status));
    assert_eq!(u64_field("attempts"), u64::from(entry.attempts));
    assert_eq!(u64_field("bytes_in"), entry.bytes_in);
    assert_eq!(u64_field("bytes_out"), entry.bytes_out);
    // Milliseconds, rounded to the microsecond (as f64: exact to 1 part in 2^52).
    let ms = v["duration_ms"].as_f64().expect("duration_ms is a number");
    let expected = entry.duration.as_secs_f64() * 1e3;
    assert!(
        (ms - expected).abs() <= 0.0005 + expected * 1e-12,
        "duration_ms {ms} for {:?}",
        entry.duration
    );
    // Empty ones are left out.
    for (name, value) in [
        ("reason", entry.reason),
        ("request_id", entry.request_id.as_str()),
        ("trace_id", entry.trace_id.as_str()),
    ] {
        match v.get(name) {
            None => assert!(value.is_empty(), "{name} {value:?} left out"),
            Some(got) => {
                assert!(!value.is_empty(), "empty {name} written");
                assert_eq!(got.as_str(), Some(value), "{name}");
            }
        }
    }
    let fields = v.as_object().map_or(0, serde_json::Map::len);
    let optional = [entry.reason, &entry.request_id, &entry.trace_id]
        .iter()
        .filter(|s| !s.is_empty())
        .count();
    assert_eq!(fields, 12 + optional, "unexpected fields in {v}");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    if choice % 2 == 0 {
        check_weight(rest);
    } else {
        check_log_line(rest);
    }
});
