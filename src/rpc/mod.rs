//! JSON-RPC 2.0 over a Unix socket: the server the daemon runs on
//! `--rpc-socket` and the client `vhost-user-scsi ctl` uses. Transport
//! only: the methods are in [`crate::mgmt`].
