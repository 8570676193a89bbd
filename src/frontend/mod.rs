//! A vhost-user-scsi frontend (QEMU's side) for tests and benchmarks (filled in by the frontend helper).
