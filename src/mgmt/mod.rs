//! The management plane: many controllers in one daemon, created, listed
//! and deleted at run time, with LUN hotplug (the top layer: it uses the
//! vhost, scsi and block layers; nothing below imports it).
//!
//! - [`api`]: the methods' parameters and results, the [`api::Api`] trait.
//! - [`Manager`]: the daemon's controllers and disks (implements `Api`).
//! - [`dispatch`], [`rpc_server`], [`rpc_client`]: JSON-RPC 2.0 over a
//!   Unix socket (`--rpc-socket`, `vhost-user-scsi ctl`).
//! - [`config`]: the `--config` TOML file (the same schema as the methods).
//! - [`metrics`]: Prometheus metrics on `--metrics-addr`.
//! - [`state`]: the `--state-file` (every controller and LUN, kept across
//!   restarts).
//! - [`validate`]: checks shared by the config file and the methods.
//! - [`disk`]: opening a LUN's backing store.

pub mod api;
pub mod config;
pub mod disk;
pub mod dispatch;
mod manager;
pub mod metrics;
pub mod rpc_client;
pub mod rpc_server;
pub mod state;
pub mod validate;

pub use manager::{nexus_of, Batch, Manager, SocketDefaults};
