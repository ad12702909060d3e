//! switchyard: a load balancer and health-check proxy for HTTP services.
//!
//! Two halves meet in one place (ARCHITECTURE.md has the map):
//!
//! * the **data path** — [`serve`] accepts connections, [`proxy`] routes them ([`router`]), picks a backend
//!   ([`balance`]) and forwards the request over [`upstream`] connections, recording what happened in
//!   [`observe`]; [`ratelimit`] refuses what a route's limits do not allow;
//! * the **control plane** — [`config`] loads and validates the TOML file, [`control`] applies reloads and runs
//!   health checks and DNS discovery, [`admin`] serves `/metrics` and the `/api` endpoints.
//!
//! They share only an [`arc_swap::ArcSwap`] holding the current [`router::Snapshot`] and the per-backend state
//! in [`balance::backend::Backend`], which is made of atomics. [`server::Server`] starts both.
#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod admin;
pub(crate) mod background;
pub mod balance;
pub mod cli;
pub mod config;
pub mod control;
pub(crate) mod demo;
pub(crate) mod error;
pub mod observe;
pub mod proxy;
pub(crate) mod ratelimit;
pub mod router;
pub mod serve;
pub mod server;
pub(crate) mod socket;
pub(crate) mod tls;
pub(crate) mod upstream;
