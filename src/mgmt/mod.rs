//! The management plane: many controllers in one daemon, created, listed
//! and deleted at run time, with LUN hotplug (the top layer: it uses the
//! vhost, scsi and block layers; nothing below imports it).

pub mod api;
pub mod dispatch;
pub mod rpc_client;
pub mod rpc_server;
