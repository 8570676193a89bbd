//! A QMP client for the QEMUs the guest tests start themselves.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A QMP connection (JSON lines over a Unix socket); events are skipped
/// (printed with [`Qmp::printing_events`]).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    print_events: bool,
}

impl Qmp {
    /// Connects (retrying every `retry` until `deadline`), reads the
    /// greeting and enters command mode.
    pub fn connect(path: &Path, deadline: Instant, retry: Duration) -> Result<Qmp, String> {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("QMP connect {}: {e}", path.display()))
                }
                Err(_) => sleep(retry),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            print_events: false,
        };
        let greeting = q.read_msg()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    /// Prints the events that arrive while a command runs. (QEMU sends
    /// none before command mode, so this after [`Qmp::connect`] misses
    /// none.)
    pub fn printing_events(mut self) -> Qmp {
        self.print_events = true;
        self
    }

    fn read_msg(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QMP connection closed".into()),
            Ok(_) => {
                serde_json::from_str(&line).map_err(|e| format!("QMP: bad JSON {line:?}: {e}"))
            }
            Err(e) => Err(format!("QMP read: {e}")),
        }
    }

    /// Runs a command (`args`: its arguments, `{}` for none): its `return`
    /// value, or the QMP error as text.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        let mut msg = json!({ "execute": cmd });
        if args.as_object().is_some_and(|a| !a.is_empty()) {
            msg["arguments"] = args;
        }
        writeln!(self.writer, "{msg}").map_err(|e| format!("QMP write: {e}"))?;
        loop {
            let m = self.read_msg()?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(format!("QMP {cmd}: {e}"));
            }
            if let Some(ev) = m.get("event").filter(|_| self.print_events) {
                println!("QMP event: {ev} {}", m.get("data").unwrap_or(&Value::Null));
            }
        }
    }
}
