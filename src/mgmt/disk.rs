//! Open a LUN's backing store, check its size against the block size, and
//! describe it to the SCSI target (VPD limits, thin provisioning).

use std::path::Path;

use super::api::LunSpec;
use crate::block::{Backing, BackingKind, BlockError};
use crate::scsi::LunConfig;
use crate::units::{BlockSize, ByteCount};

/// Largest single transfer we advertise (VPD B0h), in bytes.
pub const MAX_TRANSFER_BYTES: u32 = 4 << 20;
/// Preferred transfer size we advertise (VPD B0h), in bytes.
pub const OPTIMAL_TRANSFER_BYTES: u32 = 128 << 10;

/// Most UNMAP block descriptors in one command (VPD B0h).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Largest WRITE SAME we advertise (VPD B0h), in bytes.
pub const MAX_WRITE_SAME_BYTES: u64 = 1 << 30;

/// Why a disk cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("block-size must be 512 or 4096, not {0}")]
    BadBlockSize(u32),
    #[error("{0}")]
    Block(#[from] BlockError),
    #[error("{path}: size is zero")]
    Empty { path: String },
    #[error("{path}: size {size} is not a multiple of the block size {bs}")]
    NotMultiple {
        path: String,
        size: u64,
        bs: BlockSize,
    },
    #[error(
        "{path}: block-size={requested} is smaller than the device's logical block size {device}"
    )]
    BlockSizeTooSmall {
        path: String,
        requested: BlockSize,
        device: u32,
    },
    #[error("{path}: the device's logical block size {device} is not supported (512 or 4096)")]
    UnsupportedDeviceBlockSize { path: String, device: u32 },
}

/// Open `spec` as LUN `lun`: its backing and its description.
pub fn open_disk(spec: &LunSpec, lun: u16) -> Result<(LunConfig, Backing), DiskError> {
    if spec.passthrough {
        return open_passthrough(spec, lun);
    }
    let shown = spec.path.display().to_string();
    let requested = match spec.block_size {
        Some(n) => Some(BlockSize::new(n).ok_or(DiskError::BadBlockSize(n))?),
        None => None,
    };
    let backing = Backing::open(&spec.path, spec.readonly)?;
    let device_bs = backing.logical_block_size();
    let block_size = match requested {
        Some(bs) if bs.bytes() < device_bs => {
            return Err(DiskError::BlockSizeTooSmall {
                path: shown,
                requested: bs,
                device: device_bs,
            })
        }
        Some(bs) => bs,
        None => BlockSize::new(device_bs).ok_or(DiskError::UnsupportedDeviceBlockSize {
            path: shown.clone(),
            device: device_bs,
        })?,
    };
    let size: ByteCount = backing.size();
    if size.0 == 0 {
        return Err(DiskError::Empty { path: shown });
    }
    if !size.is_multiple_of(block_size) {
        return Err(DiskError::NotMultiple {
            path: shown,
            size: size.0,
            bs: block_size,
        });
    }
    let identity = identity_of(&spec.path);
    let serial = spec
        .serial
        .clone()
        .unwrap_or_else(|| format!("{:016x}", crate::scsi::fnv1a64(identity.as_bytes())));
    let config = LunConfig {
        lun,
        block_size,
        num_blocks: size.to_blocks(block_size),
        readonly: spec.readonly,
        serial,
        identity,
        rotational: backing.kind() == BackingKind::BlockDevice && backing.is_rotational(),
        max_transfer_blocks: MAX_TRANSFER_BYTES >> block_size.shift(),
        optimal_transfer_blocks: OPTIMAL_TRANSFER_BYTES >> block_size.shift(),
        ..LunConfig::new(lun, block_size, size.to_blocks(block_size))
    };
    let config = with_provisioning(config, &backing);
    Ok((config, backing))
}

/// A host SCSI device for passthrough (refused with the reason when it is
/// not one, [`Backing::open_passthrough`]). Block size, capacity and
/// serial are only shown: the device answers READ CAPACITY, INQUIRY and
/// the VPD pages itself.
fn open_passthrough(spec: &LunSpec, lun: u16) -> Result<(LunConfig, Backing), DiskError> {
    if let Err(msg) = super::validate::passthrough(
        spec.readonly,
        spec.block_size.is_some(),
        spec.serial.is_some(),
    ) {
        return Err(DiskError::Block(BlockError::Invalid {
            path: spec.path.clone(),
            msg,
        }));
    }
    let backing = Backing::open_passthrough(&spec.path)?;
    let block_size = BlockSize::new(backing.logical_block_size()).unwrap_or(BlockSize::B512);
    let blocks = backing.size().to_blocks(block_size).0.max(1);
    let identity = identity_of(&spec.path);
    let config = LunConfig {
        serial: format!("{:016x}", crate::scsi::fnv1a64(identity.as_bytes())),
        identity,
        passthrough: true,
        ..LunConfig::new(lun, block_size, crate::units::BlockCount(blocks))
    };
    Ok((config, backing))
}

/// Thin provisioning as far as the backing supports it: UNMAP and WRITE
/// SAME with UNMAP only where it can deallocate, LBPRZ only where
/// deallocated blocks read back as zeros.
fn with_provisioning(mut config: LunConfig, backing: &Backing) -> LunConfig {
    let bs = u64::from(config.block_size.bytes());
    config.unmap = backing.supports_unmap();
    config.lbprz = config.unmap && backing.unmap_zeroes();
    config.max_unmap_blocks = u32::try_from(backing.max_discard_bytes() / bs)
        .unwrap_or(u32::MAX)
        .max(1);
    config.max_unmap_descriptors = MAX_UNMAP_DESCRIPTORS;
    config.max_write_same_blocks = MAX_WRITE_SAME_BYTES / bs;
    config
}

/// A stable identity for a backing path: its canonical form.
pub fn identity_of(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}
