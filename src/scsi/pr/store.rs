//! Persistence of APTPL persistent reservations (SPC-4 5.9.5: persist
//! through power loss).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

use crate::scsi::lun::fnv1a64;

/// Where the persistent reservation state of a logical unit is saved,
/// keyed by `LunConfig::identity`. `save` must be atomic and durable when
/// it returns Ok.
pub trait PrStore: Send + Sync {
    /// The saved state, None when nothing was saved.
    fn load(&self, lun_identity: &str) -> io::Result<Option<Vec<u8>>>;
    fn save(&self, lun_identity: &str, state: &[u8]) -> io::Result<()>;
}

/// A [`PrStore`] in a directory: one file per logical unit named
/// `pr-<FNV-1a 64 of the identity, 16 hex digits>`, replaced atomically
/// (written to a temporary file, fsynced, renamed, directory fsynced).
#[derive(Debug, Clone)]
pub struct DirPrStore {
    dir: PathBuf,
}

impl DirPrStore {
    /// Uses `dir`, creating it if needed.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(DirPrStore { dir })
    }

    fn path(&self, identity: &str) -> PathBuf {
        self.dir
            .join(format!("pr-{:016x}", fnv1a64(identity.as_bytes())))
    }
}

impl PrStore for DirPrStore {
    fn load(&self, lun_identity: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(lun_identity)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save(&self, lun_identity: &str, state: &[u8]) -> io::Result<()> {
        let path = self.path(lun_identity);
        let mut tmp = path.clone();
        tmp.set_extension("tmp");
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(state)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()
    }
}
