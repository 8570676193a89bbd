//! Targets `config` (the `--config` TOML loader) and `state` (the
//! `--state-file` JSON loader), from arbitrary text.
//!
//! Both promise one-line errors naming the file, with a 1-based position
//! inside the text when they give one. A configuration the config loader
//! accepts, written as a state file, is accepted by the state loader (they
//! share the checks), and a state file the loader accepts reads back the
//! same after the daemon rewrites it.

use std::path::Path;

use crate::mgmt::config::{self, ConfigError};
use crate::mgmt::state::{self, SavedController, SavedState};

const FILE: &str = "/fuzz/input";

#[track_caller]
fn check_error(e: &ConfigError, text: &str) {
    let line = e.to_string();
    assert!(!line.contains('\n'), "a multi-line error: {line:?}");
    assert!(line.starts_with(FILE), "{line:?}");
    if let ConfigError::Invalid {
        at: Some((l, c)), ..
    } = e
    {
        assert!(*l >= 1 && *c >= 1, "{line:?}");
        assert!(
            *l <= text.split('\n').count(),
            "line beyond the text: {line:?}"
        );
    }
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse(text, Path::new(FILE)) {
        Err(e) => check_error(&e, text),
        Ok(cfg) => {
            let saved = SavedState {
                version: state::VERSION,
                controllers: cfg
                    .controllers
                    .into_iter()
                    .map(|c| SavedController {
                        name: c.create.name,
                        socket: c.create.socket,
                        num_queues: c.create.num_queues,
                        queue_size: c.create.queue_size,
                        initiator: c.create.initiator,
                        socket_group: c.create.socket_group,
                        socket_mode: c.create.socket_mode,
                        poll_max_us: c.create.poll_max_us,
                        luns: c.luns,
                    })
                    .collect(),
            };
            let json = serde_json::to_string_pretty(&saved).expect("state serializes");
            let back = state::parse(&json, Path::new(FILE))
                .unwrap_or_else(|e| panic!("config accepted, state refused: {e}\n{json}"));
            assert_eq!(back, saved);
        }
    }
}

pub fn run_state(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match state::parse(text, Path::new(FILE)) {
        Err(e) => check_error(&e, text),
        Ok(saved) => {
            let json = serde_json::to_string_pretty(&saved).expect("state serializes");
            let back = state::parse(&json, Path::new(FILE)).unwrap_or_else(|e| {
                panic!("a state that was read does not read back: {e}\n{json}")
            });
            assert_eq!(back, saved);
        }
    }
}
