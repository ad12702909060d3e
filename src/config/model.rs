//! The file format, and nothing else: serde structs that mirror the TOML.
//!
//! Values that need checking beyond their TOML type (addresses, durations, algorithm names, weights) are read as
//! plain strings or wide integers, so that one bad value does not stop the reader and `validate` can report every
//! problem at once. Unknown fields are collected by the loader (see [`super::load`]), not rejected here.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
pub struct File {
    #[serde(default)]
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub pools: BTreeMap<String, Pool>,
    pub runtime: Option<Runtime>,
}

/// `[[listeners]]`: an address the proxy accepts client connections on.
#[derive(Debug, Deserialize)]
pub struct Listener {
    pub address: String,
}

/// `[admin]`: the admin listener (`/healthz`, `/metrics`, `/api/...`).
#[derive(Debug, Deserialize)]
pub struct Admin {
    pub address: Option<String>,
}

/// `[[routes]]`: which requests go to which pool.
#[derive(Debug, Deserialize)]
pub struct Route {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub pool: String,
}

/// `[pools.NAME]`: a set of interchangeable backends and how to balance over them.
#[derive(Debug, Deserialize)]
pub struct Pool {
    pub algorithm: Option<String>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    pub timeouts: Option<Timeouts>,
}

/// One entry of a pool's `backends` list.
#[derive(Debug, Deserialize)]
pub struct Backend {
    pub address: String,
    pub weight: Option<i64>,
}

/// `[pools.NAME.timeouts]`.
#[derive(Debug, Deserialize)]
pub struct Timeouts {
    pub connect: Option<String>,
    pub request: Option<String>,
}

/// `[runtime]`: process-wide settings.
#[derive(Debug, Deserialize)]
pub struct Runtime {
    pub workers: Option<i64>,
}
