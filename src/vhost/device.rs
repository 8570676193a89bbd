//! What one vhost-user-scsi controller serves: the SCSI target and the
//! backing store of each LUN.

use std::sync::Arc;

use super::exec::WriteGate;
use crate::block::Backing;
use crate::scsi::Target;
use crate::units::BlockSize;

/// The backing store of one LUN.
#[derive(Debug)]
pub struct LunBacking {
    pub lun: u16,
    pub backing: Arc<Backing>,
    pub block_size: BlockSize,
    /// Orders COMPARE AND WRITE against other writes to this LUN.
    pub gate: Arc<WriteGate>,
}

impl LunBacking {
    pub fn new(lun: u16, backing: Arc<Backing>, block_size: BlockSize) -> Self {
        LunBacking {
            lun,
            backing,
            block_size,
            gate: Arc::default(),
        }
    }
}

/// A SCSI target plus the backing of each of its LUNs.
pub struct Device {
    pub target: Target,
    luns: Vec<LunBacking>,
}

impl Device {
    pub fn new(target: Target, luns: Vec<LunBacking>) -> Self {
        Device { target, luns }
    }

    /// The backing of `lun`, if it exists.
    pub fn backing(&self, lun: u16) -> Option<&Arc<Backing>> {
        self.lun(lun).map(|l| &l.backing)
    }

    /// `lun`'s backing, block size and write gate, if it exists.
    pub fn lun(&self, lun: u16) -> Option<&LunBacking> {
        self.luns.iter().find(|l| l.lun == lun)
    }

    pub fn luns(&self) -> &[LunBacking] {
        &self.luns
    }

    /// fdatasync every writable backing (shutdown path).
    pub fn sync_all(&self) {
        for l in &self.luns {
            if !l.backing.readonly() {
                // SAFETY: fdatasync on an fd we own; no memory is passed.
                let rc = unsafe { libc::fdatasync(std::os::fd::AsRawFd::as_raw_fd(&*l.backing)) };
                if rc != 0 {
                    tracing::error!(
                        lun = l.lun,
                        path = %l.backing.path().display(),
                        error = %std::io::Error::last_os_error(),
                        "flush at shutdown failed"
                    );
                }
            }
        }
    }
}
