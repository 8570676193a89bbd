//! STUB: the block helper replaces this file.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use super::BlockError;
use crate::units::ByteCount;

/// What a backing store is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackingKind {
    File,
    BlockDevice,
}

/// An open backing store.
#[derive(Debug)]
pub struct Backing {
    file: File,
    path: PathBuf,
    kind: BackingKind,
    size: ByteCount,
    logical_block_size: u32,
    direct: bool,
    rotational: bool,
}

impl Backing {
    /// Open a regular file or block device, O_DIRECT when possible.
    pub fn open(path: &Path, readonly: bool) -> Result<Backing, BlockError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_owned(),
                source,
            })?;
        let size = ByteCount(file.metadata().map(|m| m.len()).unwrap_or(0));
        Ok(Backing {
            file,
            path: path.to_owned(),
            kind: BackingKind::File,
            size,
            logical_block_size: 512,
            direct: false,
            rotational: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn kind(&self) -> BackingKind {
        self.kind
    }
    /// Size in bytes (file length or BLKGETSIZE64).
    pub fn size(&self) -> ByteCount {
        self.size
    }
    /// BLKSSZGET for devices, 512 for files.
    pub fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }
    /// Opened read-only.
    pub fn readonly(&self) -> bool {
        false
    }
    /// Opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct
    }
    /// False for files and non-rotational devices.
    pub fn is_rotational(&self) -> bool {
        self.rotational
    }
}

impl AsRawFd for Backing {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
