//! The state file (`serve --state-file PATH`): every controller and LUN of
//! the daemon, rewritten after each change made over JSON-RPC and loaded at
//! start, so a restarted daemon serves the same disks on the same sockets.
//!
//! The file is JSON, versioned:
//!
//! ```json
//! {
//!   "version": 1,
//!   "controllers": [
//!     {"name": "vm1", "socket": "/run/vhost-user-scsi/vm1.sock",
//!      "num_queues": 2, "queue_size": 256,
//!      "luns": [{"lun": 0, "path": "/var/lib/images/vm1.img",
//!                "readonly": false, "block_size": 512, "serial": "vm1-root"}]}
//!   ]
//! }
//! ```
//!
//! A controller has the fields of `controller_create` plus `luns`; a LUN
//! those of `lun_add` without `controller` ([`LunSpec`]). The daemon writes
//! every field with its *effective* value (the LUN number assigned, the
//! block size and serial in use, absolute paths), so the guest sees the
//! same disks after a restart even if a default changes; a hand-written
//! file may leave optional fields out (their defaults apply, and the daemon
//! rewrites the file with the values it used).
//!
//! Loading checks the same things as the `--config` loader (one function a
//! field in [`super::validate`], duplicates); errors are [`ConfigError`]s,
//! one line naming the file (with line and column where the JSON parser
//! knows them) and the key, e.g.
//! `/var/lib/vus/state.json: controllers[0].luns[1].lun: LUN 2 is already used by controllers[0].luns[0]`.
//!
//! Writes are atomic and durable: `PATH.tmp.PID` beside it is written and
//! fsynced, renamed over `PATH`, and the directory fsynced. `PATH.lock`
//! (flock) keeps a second daemon off the same file.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::api::{ControllerCreate, LunSpec};
use super::config::{io_reason, key_path, ConfigError};
use super::validate;

/// The format version this daemon reads and writes.
pub const VERSION: u32 = 1;

/// The content of a state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    /// Always [`VERSION`].
    pub version: u32,
    /// Every controller, by name.
    #[serde(default)]
    pub controllers: Vec<SavedController>,
}

impl Default for SavedState {
    fn default() -> Self {
        SavedState {
            version: VERSION,
            controllers: Vec::new(),
        }
    }
}

/// One controller: the fields of `controller_create` and its LUNs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedController {
    pub name: String,
    pub socket: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_max_us: Option<u32>,
    /// The LUNs, as `lun_add` would be given them.
    #[serde(default)]
    pub luns: Vec<LunSpec>,
}

impl SavedController {
    /// What `controller_create` and then `lun_add` for each LUN are given.
    pub fn into_parts(self) -> (ControllerCreate, Vec<LunSpec>) {
        (
            ControllerCreate {
                name: self.name,
                socket: self.socket,
                num_queues: self.num_queues,
                queue_size: self.queue_size,
                initiator: self.initiator,
                socket_group: self.socket_group,
                socket_mode: self.socket_mode,
                poll_max_us: self.poll_max_us,
            },
            self.luns,
        )
    }
}

/// Parses and checks state-file text; `file` only names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<SavedState, ConfigError> {
    let err = |at: Option<(usize, usize)>, key: &str, message: String| ConfigError::Invalid {
        file: file.to_owned(),
        at,
        key: key.to_owned(),
        message,
    };
    // Syntax first, then the version (a later version may have other
    // fields), then the schema with the position and key of an error.
    let value: Value =
        serde_json::from_str(text).map_err(|e| err(json_at(&e), "", json_message(&e)))?;
    let Value::Object(top) = &value else {
        return Err(err(
            None,
            "",
            format!(
                "expected a JSON object {{\"version\": {VERSION}, \"controllers\": [...]}}, not {}",
                kind(&value)
            ),
        ));
    };
    match top.get("version") {
        None => {
            return Err(err(
                None,
                "version",
                "missing (not a vhost-user-scsi state file?)".into(),
            ))
        }
        Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {}
        Some(v) => {
            return Err(err(
                None,
                "version",
                format!("unsupported version {v} (this vhost-user-scsi reads version {VERSION})"),
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let state: SavedState = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let key = key_path(e.path());
        let inner = e.into_inner();
        err(json_at(&inner), &key, json_message(&inner))
    })?;
    check(&state).map_err(|(key, message)| err(None, &key, message))?;
    Ok(state)
}

/// Line and column of a JSON error, if it has them.
fn json_at(e: &serde_json::Error) -> Option<(usize, usize)> {
    // serde_json says column 0 for an end of input right after a newline
    // (or an empty file); we promise 1-based columns (found by fuzzing).
    (e.line() > 0).then(|| (e.line(), e.column().max(1)))
}

/// A JSON error's message without serde_json's " at line L column C".
fn json_message(e: &serde_json::Error) -> String {
    let mut s = e.to_string();
    if e.line() > 0 {
        if let Some(i) = s.rfind(" at line ") {
            s.truncate(i);
        }
    }
    s
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The checks of the `--config` loader: each field ([`validate`]), no
/// controller name or socket twice, no LUN number twice in a controller.
/// The error is (key, message).
fn check(state: &SavedState) -> Result<(), (String, String)> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut sockets: HashMap<&Path, usize> = HashMap::new();
    for (i, c) in state.controllers.iter().enumerate() {
        let key = |k: &str| format!("controllers[{i}].{k}");
        let at = |k: &str| {
            let key = key(k);
            move |m: String| (key, m)
        };
        validate::controller_name(&c.name).map_err(at("name"))?;
        if let Some(first) = names.insert(&c.name, i) {
            return Err((
                key("name"),
                format!(
                    "controller name {:?} is already used by controllers[{first}]",
                    c.name
                ),
            ));
        }
        validate::path(&c.socket).map_err(at("socket"))?;
        if let Some(first) = sockets.insert(&c.socket, i) {
            return Err((
                key("socket"),
                format!(
                    "socket {} is already used by controllers[{first}]",
                    c.socket.display()
                ),
            ));
        }
        if let Some(n) = c.num_queues {
            validate::num_queues(n).map_err(at("num_queues"))?;
        }
        if let Some(n) = c.queue_size {
            validate::queue_size(n).map_err(at("queue_size"))?;
        }
        if let Some(n) = c.poll_max_us {
            validate::poll_max_us(n).map_err(at("poll_max_us"))?;
        }
        let mut luns: HashMap<u16, usize> = HashMap::new();
        for (j, l) in c.luns.iter().enumerate() {
            let at = |k: &str| {
                let key = format!("controllers[{i}].luns[{j}].{k}");
                move |m: String| (key, m)
            };
            if let Some(n) = l.lun {
                validate::lun(n).map_err(at("lun"))?;
                if let Some(first) = luns.insert(n, j) {
                    return Err(at("lun")(format!(
                        "LUN {n} is already used by controllers[{i}].luns[{first}]"
                    )));
                }
            }
            validate::path(&l.path).map_err(at("path"))?;
            if let Some(b) = l.block_size {
                validate::block_size(b).map_err(at("block_size"))?;
            }
            if let Some(s) = &l.serial {
                validate::serial(s).map_err(at("serial"))?;
            }
            if l.passthrough {
                validate::passthrough(l.readonly, l.block_size.is_some(), l.serial.is_some())
                    .map_err(at("passthrough"))?;
            }
        }
    }
    Ok(())
}

/// The state file of a running daemon: its path, and the lock that keeps
/// other daemons off it while this one runs.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    _lock: Flock<File>,
}

impl StateFile {
    /// Takes the state file at `path` (made absolute) for this process:
    /// creates its directory if missing, locks `PATH.lock` (another daemon
    /// holding it is an error) and removes temporary files a crashed
    /// daemon left (`PATH.tmp.*`). Reads nothing yet.
    pub fn open(path: &Path) -> io::Result<StateFile> {
        let path = std::path::absolute(path)?;
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => (dir, name.to_string_lossy().into_owned()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a file name",
                ))
            }
        };
        fs::create_dir_all(dir)?;
        let lock_path = dir.join(format!("{name}.lock"));
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "in use by another vhost-user-scsi ({} is locked)",
                        lock_path.display()
                    ),
                )
            } else {
                io::Error::from(e)
            }
        })?;
        let temp_prefix = format!("{name}.tmp.");
        for entry in fs::read_dir(dir)?.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&temp_prefix)
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(StateFile { path, _lock: lock })
    }

    /// The state file's (absolute) path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; `None` if the file does not exist.
    pub fn load(&self) -> Result<Option<SavedState>, ConfigError> {
        load(&self.path)
    }

    /// Replace the file with `state`, atomically and durably.
    pub fn save(&self, state: &SavedState) -> io::Result<()> {
        let mut text = serde_json::to_string_pretty(state)?;
        text.push('\n');
        write_atomic(&self.path, text.as_bytes())
    }
}

/// Reads and checks the state file `path`; `None` if it does not exist.
pub fn load(path: &Path) -> Result<Option<SavedState>, ConfigError> {
    match fs::read_to_string(path) {
        Ok(text) => parse(&text, path).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::Read {
            path: path.to_owned(),
            reason: io_reason(&e),
            kind: e.kind(),
        }),
    }
}

/// Replace `path` with `bytes`: write `PATH.tmp.PID` (mode 0600), fsync
/// it, rename it over `path`, fsync the directory. On error the temporary
/// file is removed and `path` is as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let tmp = path.with_file_name(format!(
        "{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/var/lib/vus/state.json";

    fn error(text: &str) -> String {
        parse(text, Path::new(FILE)).unwrap_err().to_string()
    }

    fn lun(n: u16, path: &str) -> LunSpec {
        LunSpec {
            lun: Some(n),
            path: path.into(),
            readonly: false,
            block_size: Some(512),
            serial: Some(format!("s{n}")),
            passthrough: false,
        }
    }

    fn sample() -> SavedState {
        SavedState {
            version: VERSION,
            controllers: vec![
                SavedController {
                    name: "vm1".into(),
                    socket: "/run/vus/vm1.sock".into(),
                    initiator: None,
                    socket_group: None,
                    socket_mode: None,
                    poll_max_us: Some(0),
                    num_queues: Some(2),
                    queue_size: Some(128),
                    luns: vec![
                        lun(0, "/img/a.img"),
                        LunSpec {
                            readonly: true,
                            block_size: Some(4096),
                            serial: Some("with space ~!".into()),
                            ..lun(7, "/img/b.img")
                        },
                    ],
                },
                SavedController {
                    name: "vm2".into(),
                    socket: "/run/vus/vm2.sock".into(),
                    initiator: None,
                    socket_group: None,
                    socket_mode: None,
                    poll_max_us: None,
                    num_queues: Some(4),
                    queue_size: Some(256),
                    luns: vec![],
                },
            ],
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let sf = StateFile::open(&path).unwrap();
        assert_eq!(sf.load().unwrap(), None, "no file yet");
        let state = sample();
        sf.save(&state).unwrap();
        assert_eq!(sf.load().unwrap(), Some(state.clone()));
        assert_eq!(load(&path).unwrap(), Some(state.clone()));
        // Readable JSON with every field, and private.
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n"), "{text}");
        for field in [
            "\"version\": 1",
            "\"num_queues\": 2",
            "\"queue_size\": 128",
            "\"lun\": 7",
            "\"readonly\": true",
            "\"block_size\": 4096",
            "\"serial\": \"with space ~!\"",
        ] {
            assert!(text.contains(field), "{field} not in {text}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The parts are what controller_create and lun_add are given.
        let (create, luns) = state.controllers[0].clone().into_parts();
        assert_eq!(create.name, "vm1");
        assert_eq!(create.num_queues, Some(2));
        assert_eq!(luns[1].lun, Some(7));
        // An empty state round-trips too.
        sf.save(&SavedState::default()).unwrap();
        assert_eq!(sf.load().unwrap(), Some(SavedState::default()));
    }

    #[test]
    fn writes_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let sf = StateFile::open(&path).unwrap();
        for _ in 0..3 {
            sf.save(&sample()).unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["state.json", "state.json.lock"]);
        // A failed write (the target is a directory) leaves the old file
        // alone and no temporary file either.
        let blocked = dir.path().join("sub");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), b"x").unwrap();
        assert!(write_atomic(&blocked, b"{}").is_err());
        assert!(blocked.join("x").exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp.")
            })
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn open_locks_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/state.json");
        // A temporary file a crashed daemon left behind.
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let stale = path.with_file_name("state.json.tmp.99999999");
        fs::write(&stale, b"half").unwrap();
        let first = StateFile::open(&path).unwrap();
        assert!(!stale.exists(), "stale temporary file kept");
        // The same file cannot be taken twice at once (flock is per open
        // file, so this holds within a process too).
        let e = StateFile::open(&path).unwrap_err();
        assert!(
            e.to_string().contains("in use by another vhost-user-scsi"),
            "{e}"
        );
        drop(first);
        let again = StateFile::open(&path).unwrap();
        assert_eq!(again.path(), path);
    }

    #[test]
    fn optional_fields_may_be_left_out() {
        let s = parse(
            r#"{"version": 1, "controllers": [{"name": "a", "socket": "/a.sock",
                "luns": [{"path": "/a.img"}]}]}"#,
            Path::new(FILE),
        )
        .unwrap();
        let (create, luns) = s.controllers[0].clone().into_parts();
        assert_eq!(create.num_queues, None);
        assert_eq!(luns[0].lun, None);
        assert_eq!(luns[0].serial, None);
        assert_eq!(
            parse(r#"{"version": 1}"#, Path::new(FILE)).unwrap(),
            SavedState::default()
        );
    }

    #[test]
    fn damaged_files_are_one_line_naming_the_file() {
        let cases: &[(&str, &str)] = &[
            // Not JSON, cut short, empty.
            ("{\"version\": 1,\n \"controllers\": [\n", "/var/lib/vus/state.json:3:1: EOF while parsing a list"),
            ("", "/var/lib/vus/state.json:1:1: EOF while parsing a value"),
            (
                "{\"version\": 1} x",
                "/var/lib/vus/state.json:1:16: trailing characters",
            ),
            (
                "[]",
                "/var/lib/vus/state.json: expected a JSON object {\"version\": 1, \"controllers\": [...]}, not an array",
            ),
            // Version.
            (
                "{\"controllers\": []}",
                "/var/lib/vus/state.json: version: missing (not a vhost-user-scsi state file?)",
            ),
            (
                "{\"version\": 2, \"controllers\": {}}",
                "/var/lib/vus/state.json: version: unsupported version 2 (this vhost-user-scsi reads version 1)",
            ),
            (
                "{\"version\": \"1\"}",
                "/var/lib/vus/state.json: version: unsupported version \"1\" (this vhost-user-scsi reads version 1)",
            ),
            // Schema: position and key.
            (
                "{\"version\": 1,\n \"controllers\": [{\"name\": \"a\", \"socket\": \"/a\",\n \"num_queues\": \"two\"}]}",
                "/var/lib/vus/state.json:3:20: controllers[0].num_queues: invalid type: string \"two\", expected u16",
            ),
            (
                "{\"version\": 1, \"controllers\": [{\"name\": \"a\", \"socket\": \"/a\", \"luns\": [{\"path\": \"/x\", \"ro\": true}]}]}",
                "/var/lib/vus/state.json:1:89: controllers[0].luns[0].ro: unknown field `ro`, \
                 expected one of `lun`, `path`, `readonly`, `block_size`, `serial`, `passthrough`",
            ),
            (
                "{\"version\": 1, \"controllers\": [{\"name\": \"a\"}]}",
                "/var/lib/vus/state.json:1:44: controllers[0]: missing field `socket`",
            ),
            (
                "{\"version\": 1, \"extra\": 0}",
                "/var/lib/vus/state.json:1:22: extra: unknown field `extra`, expected `version` or `controllers`",
            ),
            // Values (validate.rs).
            (
                "{\"version\": 1, \"controllers\": [{\"name\": \"-a\", \"socket\": \"/a\"}]}",
                "/var/lib/vus/state.json: controllers[0].name: controller name \"-a\" must not start with '.' or '-'",
            ),
            (
                "{\"version\": 1, \"controllers\": [{\"name\": \"a\", \"socket\": \"/a\", \"queue_size\": 100}]}",
                "/var/lib/vus/state.json: controllers[0].queue_size: 100 is not a power of two from 1 to 1024",
            ),
            (
                "{\"version\": 1, \"controllers\": [{\"name\": \"a\", \"socket\": \"/a\", \"luns\": [{\"path\": \"/x\", \"lun\": 16384}]}]}",
                "/var/lib/vus/state.json: controllers[0].luns[0].lun: 16384 is out of range 0..=16383",
            ),
            (
                "{\"version\": 1, \"controllers\": [{\"name\": \"a\", \"socket\": \"/a\", \"luns\": [{\"path\": \"/x\", \"block_size\": 1024}]}]}",
                "/var/lib/vus/state.json: controllers[0].luns[0].block_size: 1024 is not a supported block size (512 or 4096)",
            ),
            (
                "{\"version\": 1, \"controllers\": [{\"name\": \"a\", \"socket\": \"/a\", \"luns\": [{\"path\": \"\"}]}]}",
                "/var/lib/vus/state.json: controllers[0].luns[0].path: path is empty",
            ),
            (
                "{\"version\": 1, \"controllers\": [{\"name\": \"a\", \"socket\": \"/a\", \"luns\": [{\"path\": \"/x\", \"serial\": \"tab\\there\"}]}]}",
                "/var/lib/vus/state.json: controllers[0].luns[0].serial: serial \"tab\\there\" contains '\\t' (only printable ASCII is allowed)",
            ),
            // Duplicates.
            (
                "{\"version\": 1, \"controllers\": [{\"name\": \"a\", \"socket\": \"/a\"}, {\"name\": \"a\", \"socket\": \"/b\"}]}",
                "/var/lib/vus/state.json: controllers[1].name: controller name \"a\" is already used by controllers[0]",
            ),
            (
                "{\"version\": 1, \"controllers\": [{\"name\": \"a\", \"socket\": \"/a\"}, {\"name\": \"b\", \"socket\": \"/a\"}]}",
                "/var/lib/vus/state.json: controllers[1].socket: socket /a is already used by controllers[0]",
            ),
            (
                "{\"version\": 1, \"controllers\": [{\"name\": \"a\", \"socket\": \"/a\", \"luns\": [{\"path\": \"/x\", \"lun\": 3}, {\"path\": \"/y\", \"lun\": 3}]}]}",
                "/var/lib/vus/state.json: controllers[0].luns[1].lun: LUN 3 is already used by controllers[0].luns[0]",
            ),
        ];
        let mut wrong = Vec::new();
        for (text, want) in cases {
            let got = error(text);
            if got != *want {
                wrong.push(format!("{text}\n  got:  {got}\n  want: {want}"));
            }
            assert_eq!(got.lines().count(), 1, "{got}");
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn unreadable_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be.
        let e = load(dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot read {}: Is a directory", dir.path().display())
        );
        let file = dir.path().join("state.json");
        fs::write(&file, "{\"version\": 1, \"controllers\": 7}\n").unwrap();
        assert!(load(&file)
            .unwrap_err()
            .to_string()
            .starts_with(&format!("{}:1:", file.display())));
    }
}
