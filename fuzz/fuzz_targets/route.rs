//! Route matching: any host and path are matched against a fixed table without a panic.
#![no_main]

use std::sync::OnceLock;

use switchyard::router::Snapshot;

const CONFIG: &str = r#"
[[listeners]]
address = "127.0.0.1:0"
[[routes]]
pool = "any"
[[routes]]
path_prefix = "/api"
pool = "api"
[[routes]]
host = "shop.example.com"
pool = "shop"
[[routes]]
host = "shop.example.com"
path_prefix = "/api/v2"
pool = "api"
[pools.any]
backends = [{ address = "127.0.0.1:1" }]
[pools.api]
backends = [{ address = "127.0.0.1:2" }]
[pools.shop]
backends = [{ address = "127.0.0.1:3" }]
"#;

fn table() -> &'static Snapshot {
    static TABLE: OnceLock<Snapshot> = OnceLock::new();
    TABLE.get_or_init(|| {
        let config = switchyard::config::parse(CONFIG, "fuzz.toml").expect("fixed config");
        Snapshot::of(&config)
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (host, path) = text.split_once('\n').unwrap_or((&text, "/"));
    let host = (!host.is_empty()).then_some(host);
    let found = table().has_route(host, path);
    // The host-less "/" route catches every path that starts with "/".
    if path.starts_with('/') {
        assert!(found);
    }
});
