//! switchyard: a load balancer and health-check proxy for HTTP services.
//!
//! The crate is split in two halves that meet in one place:
//!
//! * the **data path** — [`server`] accepts connections, [`proxy`] routes ([`router`]), picks a backend
//!   ([`pool`], [`select`]) and forwards the request;
//! * the **control plane** — [`config`] loads and validates the TOML file, [`health`] checks backends,
//!   [`breaker`] holds each backend's circuit state, [`admin`] serves `/metrics` and the `/api` endpoints.
//!
//! They share only an [`arc_swap::ArcSwap`] holding the current [`router::Snapshot`] and the per-backend state in
//! [`backend::Backend`], which is made of atomics.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod backend;
pub mod breaker;
pub mod client_conn;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod error;
pub mod health;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod request_body;
pub mod router;
pub mod select;
pub mod server;
pub mod socket;
pub mod tls;
pub mod upstream;
