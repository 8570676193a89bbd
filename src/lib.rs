//! vhost-user-scsi: a userspace vhost-user-scsi backend.
//!
//! Layers (each a module with one job; a module only imports the ones below it):
//! - [`vhost`]: the `VhostUserBackend` implementation, worker threads, queue wiring.
//! - [`virtio_scsi`]: virtio-scsi request/response structures, descriptor-chain parsing.
//! - [`scsi`]: a transport-independent SCSI target (CDB decoding, emulation, sense).
//! - [`block`]: backing devices and the io_uring engine.
//! - [`units`]: newtypes for blocks and bytes, shared by `scsi` and `block`.
//! - [`unix_socket`]: listening sockets that appear only once they listen
//!   (the vhost-user and management sockets).
//!
//! [`frontend`] is a vhost-user *frontend* (QEMU's side) used by the host
//! integration tests and the benchmark; [`cli`] is the command line.
//! `fuzzing` holds the fuzz targets (`fuzz/`, docs/development.md).

pub mod bench;
pub mod block;
pub mod cli;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod mgmt;
pub mod scsi;
pub mod units;
pub mod unix_socket;
pub mod vhost;
pub mod virtio_scsi;
