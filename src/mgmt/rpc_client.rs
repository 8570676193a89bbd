//! A JSON-RPC 2.0 client for the management socket (what `ctl` uses).
//!
//! One request at a time: each is one line of JSON with the next numeric
//! `id` (JSON-RPC 2.0 section 4); the answer is one line, whose `id` must
//! match (section 5). No timeout: a call such as `lun_remove` may wait for
//! in-flight I/O to drain.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::api::ApiError;

/// Largest answer accepted (a `stats` of many controllers is well below).
const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// Why a call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no daemon is listening on {path} (is `vhost-user-scsi serve --rpc-socket {path}` running?)",
        path = .path.display()
    )]
    NotRunning { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// The daemon's answer is not a valid JSON-RPC 2.0 response.
    #[error("bad answer from the daemon: {0}")]
    Protocol(String),
    /// The daemon refused the call.
    #[error(transparent)]
    Rpc(ApiError),
}

/// A connection to the management socket.
#[derive(Debug)]
pub struct RpcClient {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl RpcClient {
    /// Connect to the daemon's socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<RpcClient, ClientError> {
        let path = path.as_ref().to_owned();
        let writer = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ClientError::NotRunning { path })
            }
            Err(source) => return Err(ClientError::Io { path, source }),
        };
        let reader = match writer.try_clone() {
            Ok(r) => BufReader::new(r),
            Err(source) => return Err(ClientError::Io { path, source }),
        };
        Ok(RpcClient {
            path,
            writer,
            reader,
            next_id: 1,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Call `method` with `params` (`None`: no `params` member) and wait
    /// for its result.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let (Some(p), Some(obj)) = (params, request.as_object_mut()) {
            obj.insert("params".into(), p);
        }
        let mut line = serde_json::to_vec(&request)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the request: {e}")))?;
        line.push(b'\n');
        self.writer.write_all(&line).map_err(|e| self.io(e))?;

        let mut answer = Vec::new();
        (&mut self.reader)
            .take(MAX_ANSWER_BYTES)
            .read_until(b'\n', &mut answer)
            .map_err(|e| self.io(e))?;
        if answer.last() != Some(&b'\n') {
            return Err(if answer.len() as u64 >= MAX_ANSWER_BYTES {
                ClientError::Protocol(format!("answer longer than {MAX_ANSWER_BYTES} bytes"))
            } else {
                ClientError::Protocol("daemon closed the connection".into())
            });
        }
        parse_answer(&answer, id)
    }

    fn io(&self, source: io::Error) -> ClientError {
        if matches!(
            source.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ) {
            return ClientError::Protocol("daemon closed the connection".into());
        }
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// The result of the response `bytes` to request `id`.
fn parse_answer(bytes: &[u8], id: u64) -> Result<Value, ClientError> {
    let bad = |m: String| ClientError::Protocol(m);
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Value::Object(mut obj) = v else {
        return Err(bad("not an object".into()));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(bad("`jsonrpc` is not \"2.0\"".into()));
    }
    let got = obj.remove("id").unwrap_or(Value::Null);
    match (obj.remove("result"), obj.remove("error")) {
        (Some(result), None) if got.as_u64() == Some(id) => Ok(result),
        (None, Some(error)) => {
            let e: ApiError = serde_json::from_value(error)
                .map_err(|e| bad(format!("malformed error object: {e}")))?;
            // A request the daemon could not read is answered with id null.
            if got.as_u64() == Some(id) || got.is_null() {
                Err(ClientError::Rpc(e))
            } else {
                Err(bad(format!("answer to request {got}, expected {id}")))
            }
        }
        (Some(_), None) => Err(bad(format!("answer to request {got}, expected {id}"))),
        _ => Err(bad("needs exactly one of `result` and `error`".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mgmt::api::code;

    #[test]
    fn answers() {
        assert_eq!(
            parse_answer(br#"{"jsonrpc":"2.0","result":{"a":1},"id":3}"#, 3).unwrap(),
            json!({"a": 1})
        );
        match parse_answer(
            br#"{"jsonrpc":"2.0","error":{"code":-32001,"message":"no"},"id":3}"#,
            3,
        ) {
            Err(ClientError::Rpc(e)) => {
                assert_eq!(e, ApiError::not_found("no"));
                assert_eq!(ClientError::Rpc(e).to_string(), "no (code -32001)");
            }
            other => panic!("{other:?}"),
        }
        match parse_answer(
            br#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"p"},"id":null}"#,
            3,
        ) {
            Err(ClientError::Rpc(e)) => assert_eq!(e.code, code::PARSE_ERROR),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_answers() {
        for bad in [
            &b"nope"[..],
            br#"[1]"#,
            br#"{"result":1,"id":3}"#,
            br#"{"jsonrpc":"2.0","result":1,"id":4}"#,
            br#"{"jsonrpc":"2.0","id":3}"#,
            br#"{"jsonrpc":"2.0","result":1,"error":{"code":1,"message":"x"},"id":3}"#,
            br#"{"jsonrpc":"2.0","error":{"code":"x"},"id":3}"#,
            br#"{"jsonrpc":"2.0","error":{"code":1,"message":"x"},"id":4}"#,
        ] {
            assert!(
                matches!(parse_answer(bad, 3), Err(ClientError::Protocol(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn missing_socket_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rpc.sock");
        let e = RpcClient::connect(&path).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e:?}");
        assert!(
            e.to_string().starts_with("no daemon is listening on "),
            "{e}"
        );
        // A socket file nobody accepts on.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let e = RpcClient::connect(&path).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e:?}");
    }
}
