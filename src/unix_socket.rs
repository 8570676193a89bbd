//! Listening Unix sockets that appear in the file system only once they
//! listen.
//!
//! bind(2) creates the socket file before listen(2) makes it accept: a
//! client that waits for the file (an orchestrator starting QEMU, a test)
//! and connects in between is refused. So the socket is bound under a
//! temporary name beside `path` and hard-linked into place once it
//! listens; the temporary name is then removed. A name too long for a
//! socket address is bound in place instead.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::stat::{umask, Mode};

/// Where [`listen_at`] binds before linking the socket to `path`:
/// `.NAME.PID` beside it (only this process can have left one behind).
fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{}", std::process::id()))
}

/// Who may connect to a socket: its file's mode and group. `None` keeps
/// what bind(2) gives (the process umask, its group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketAccess {
    pub mode: Option<u32>,
    pub gid: Option<u32>,
}

impl SocketAccess {
    /// Only the owner may connect.
    pub const OWNER_ONLY: SocketAccess = SocketAccess {
        mode: Some(0o600),
        gid: None,
    };
}

/// Listen on `path`, which must not exist. The socket file has the mode
/// and group of `access` before it appears at `path` (no window in which
/// others could connect, none in which the group's members could not).
/// Returns the listener and the socket file's inode, for
/// [`remove_if_ours`].
pub fn listen_at(path: &Path, access: SocketAccess) -> io::Result<(UnixListener, u64)> {
    let mode = access.mode;
    let tmp = temp_name(path);
    let _ = std::fs::remove_file(&tmp);
    let bind = |at: &Path| match mode {
        Some(m) => {
            // umask is per process: set it for the bind only.
            let old = umask(Mode::from_bits_truncate(!m & 0o777));
            let r = UnixListener::bind(at);
            umask(old);
            r
        }
        None => UnixListener::bind(at),
    };
    let mut at: &Path = &tmp;
    let mut bound = bind(at);
    if matches!(&bound, Err(e) if e.kind() == io::ErrorKind::InvalidInput) {
        at = path;
        bound = bind(at);
    }
    let listener = bound?;
    let set_up = || -> io::Result<u64> {
        if let Some(gid) = access.gid {
            std::os::unix::fs::lchown(at, None, Some(gid)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot give the socket to group {gid}: {e}"),
                )
            })?;
        }
        if let Some(m) = mode {
            std::fs::set_permissions(at, std::fs::Permissions::from_mode(m))?;
        }
        let ino = std::fs::symlink_metadata(at)?.ino();
        if at != path {
            // Fails if the path was taken meanwhile, as bind(2) would.
            std::fs::hard_link(at, path)?;
        }
        Ok(ino)
    };
    let result = set_up();
    if at != path || result.is_err() {
        let _ = std::fs::remove_file(at);
    }
    result.map(|ino| (listener, ino))
}

/// Remove the socket file `path` if it is still the one we created (inode
/// `ino`): another process may have replaced it meanwhile.
pub fn remove_if_ours(path: &Path, ino: u64) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == ino) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), "cannot remove the socket: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::UnixStream;

    #[test]
    fn socket_listens_at_path_and_leaves_no_temporary_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (_l, ino) = listen_at(&path, SocketAccess::OWNER_ONLY).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.ino(), ino);
        assert!(UnixStream::connect(&path).is_ok());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        remove_if_ours(&path, ino);
        assert!(!path.exists());
    }

    #[test]
    fn group_and_mode_are_set_before_the_socket_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.sock");
        let gid = nix::unistd::getegid().as_raw();
        let access = SocketAccess {
            mode: Some(0o660),
            gid: Some(gid),
        };
        let (_l, ino) = listen_at(&path, access).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), gid);
        remove_if_ours(&path, ino);
    }

    #[test]
    fn an_existing_path_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        std::fs::write(&path, b"x").unwrap();
        assert!(listen_at(&path, SocketAccess::default()).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Not ours: left alone.
        remove_if_ours(&path, 0);
        assert!(path.exists());
    }
}
