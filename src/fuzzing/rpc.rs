//! Target `rpc`: the JSON-RPC server's request handling and the method
//! dispatcher, against a mock [`Api`].
//!
//! The input is the byte stream a client sends on the management socket:
//! JSON values back to back, read as the server reads them, each answered
//! through the server's own `handle_value` (batches, notifications, bad
//! requests) and [`crate::mgmt::dispatch`]. The mock keeps controllers and
//! LUNs and checks every parameter with [`crate::mgmt::validate`], so the
//! methods' results and errors depend on the input. Every answer must be a
//! well-formed JSON-RPC response with the request's id, and never Internal
//! error: the mock does not panic, so that code means the decoder did.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;

use crate::mgmt::api::{
    code, Api, ApiError, ControllerCreate, ControllerDelete, ControllerInfo, ControllerStats,
    LunAdd, LunInfo, LunRemove, LunResize, Stats, StatsQuery,
};
use crate::mgmt::rpc_server::handle_value;
use crate::mgmt::validate;

/// Values read from one input.
const MAX_VALUES: usize = 64;

/// Controllers by name, with their LUNs.
#[derive(Default)]
pub struct MockApi {
    controllers: Mutex<BTreeMap<String, ControllerInfo>>,
}

fn invalid(e: String) -> ApiError {
    ApiError::invalid_params(e)
}

impl Api for MockApi {
    fn controller_create(&self, p: ControllerCreate) -> Result<ControllerInfo, ApiError> {
        validate::controller_name(&p.name).map_err(invalid)?;
        validate::path(&p.socket).map_err(invalid)?;
        if let Some(n) = p.num_queues {
            validate::num_queues(n).map_err(invalid)?;
        }
        if let Some(n) = p.queue_size {
            validate::queue_size(n).map_err(invalid)?;
        }
        if let Some(i) = &p.initiator {
            validate::initiator(i).map_err(invalid)?;
        }
        if let Some(m) = &p.socket_mode {
            validate::socket_mode(m).map_err(invalid)?;
        }
        let mut all = self.controllers.lock().unwrap();
        if all.contains_key(&p.name) {
            return Err(ApiError::exists(format!("controller `{}` exists", p.name)));
        }
        let info = ControllerInfo {
            name: p.name.clone(),
            socket: p.socket,
            num_queues: p.num_queues.unwrap_or(validate::DEFAULT_NUM_QUEUES),
            queue_size: p.queue_size.unwrap_or(validate::DEFAULT_QUEUE_SIZE),
            initiator: p.initiator,
            socket_group: p.socket_group,
            socket_mode: p.socket_mode,
            poll_max_us: p.poll_max_us.unwrap_or(0),
            connected: false,
            state: "listening".into(),
            last_error: None,
            luns: Vec::new(),
        };
        all.insert(p.name, info.clone());
        Ok(info)
    }

    fn controller_delete(&self, p: ControllerDelete) -> Result<(), ApiError> {
        match self.controllers.lock().unwrap().remove(&p.name) {
            Some(_) => Ok(()),
            None => Err(ApiError::not_found(format!("no controller `{}`", p.name))),
        }
    }

    fn controller_list(&self) -> Result<Vec<ControllerInfo>, ApiError> {
        Ok(self.controllers.lock().unwrap().values().cloned().collect())
    }

    fn lun_add(&self, p: LunAdd) -> Result<LunInfo, ApiError> {
        let spec = p.spec();
        validate::path(&spec.path).map_err(invalid)?;
        if let Some(b) = spec.block_size {
            validate::block_size(b).map_err(invalid)?;
        }
        if let Some(s) = &spec.serial {
            validate::serial(s).map_err(invalid)?;
        }
        if let Some(n) = spec.lun {
            validate::lun(n).map_err(invalid)?;
        }
        let mut all = self.controllers.lock().unwrap();
        let c = all
            .get_mut(&p.controller)
            .ok_or_else(|| ApiError::not_found(format!("no controller `{}`", p.controller)))?;
        let lun = match spec.lun {
            Some(n) if c.luns.iter().any(|l| l.lun == n) => {
                return Err(ApiError::exists(format!("LUN {n} is used")))
            }
            Some(n) => n,
            None => (0..=crate::scsi::MAX_LUN)
                .find(|n| c.luns.iter().all(|l| l.lun != *n))
                .ok_or_else(|| ApiError::exists("no free LUN"))?,
        };
        let block_size = spec.block_size.unwrap_or(512);
        let info = LunInfo {
            lun,
            path: spec.path,
            readonly: spec.readonly,
            block_size,
            num_blocks: 2048,
            size: 2048 * u64::from(block_size),
            serial: spec.serial.unwrap_or_else(|| format!("serial{lun}")),
            passthrough: spec.passthrough,
        };
        c.luns.push(info.clone());
        Ok(info)
    }

    fn lun_remove(&self, p: LunRemove) -> Result<(), ApiError> {
        let mut all = self.controllers.lock().unwrap();
        let c = all
            .get_mut(&p.controller)
            .ok_or_else(|| ApiError::not_found(format!("no controller `{}`", p.controller)))?;
        let before = c.luns.len();
        c.luns.retain(|l| l.lun != p.lun);
        if c.luns.len() == before {
            return Err(ApiError::not_found(format!("no LUN {}", p.lun)));
        }
        Ok(())
    }

    fn lun_resize(&self, p: LunResize) -> Result<LunInfo, ApiError> {
        let mut all = self.controllers.lock().unwrap();
        let c = all
            .get_mut(&p.controller)
            .ok_or_else(|| ApiError::not_found(format!("no controller `{}`", p.controller)))?;
        let l = c
            .luns
            .iter_mut()
            .find(|l| l.lun == p.lun)
            .ok_or_else(|| ApiError::not_found(format!("no LUN {}", p.lun)))?;
        if let Some(size) = p.size {
            if size < l.size {
                return Err(ApiError::invalid_params("cannot shrink"));
            }
            l.num_blocks = size / u64::from(l.block_size);
            l.size = l.num_blocks * u64::from(l.block_size);
        }
        Ok(l.clone())
    }

    fn stats(&self, p: StatsQuery) -> Result<Stats, ApiError> {
        let all = self.controllers.lock().unwrap();
        let controllers = all
            .values()
            .filter(|c| p.controller.iter().all(|n| *n == c.name))
            .map(|c| ControllerStats {
                name: c.name.clone(),
                luns: Vec::new(),
                ..ControllerStats::default()
            })
            .collect();
        Ok(Stats { controllers })
    }

    fn shutdown(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

pub fn run(data: &[u8]) {
    let api = MockApi::default();
    let values = serde_json::Deserializer::from_slice(data).into_iter::<Value>();
    for value in values.take(MAX_VALUES) {
        let Ok(value) = value else {
            // The server answers a parse error and closes the connection.
            return;
        };
        let ids = request_ids(&value);
        let Some(answer) = handle_value(&api, value) else {
            assert!(ids.iter().all(Option::is_none), "a call got no answer");
            continue;
        };
        serde_json::to_vec(&answer).expect("answers serialize");
        match answer {
            Value::Array(answers) => {
                let calls: Vec<_> = ids.into_iter().flatten().collect();
                assert_eq!(answers.len(), calls.len(), "one answer per call");
                for (a, id) in answers.iter().zip(calls) {
                    check_answer(a, Some(&id));
                }
            }
            single => {
                let id = ids.into_iter().next().flatten();
                check_answer(&single, id.as_ref());
            }
        }
    }
}

/// For each request in `v` (one, or a batch): `Some(id)` for a call that
/// must be answered with that id (null for a request too broken to have
/// one), `None` for a notification.
fn request_ids(v: &Value) -> Vec<Option<Value>> {
    let one = |r: &Value| match r {
        Value::Object(m) => match m.get("id") {
            None => {
                // A notification, unless it is an invalid request (those
                // are answered with id null).
                let valid = m.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
                    && m.get("method").is_some_and(Value::is_string)
                    && !matches!(
                        m.get("params"),
                        Some(Value::Bool(_) | Value::Number(_) | Value::String(_))
                    );
                (!valid).then_some(Value::Null)
            }
            Some(id @ (Value::Null | Value::String(_) | Value::Number(_))) => Some(id.clone()),
            Some(_) => Some(Value::Null),
        },
        _ => Some(Value::Null),
    };
    match v {
        Value::Array(items) if items.is_empty() => vec![Some(Value::Null)],
        Value::Array(items) => items.iter().map(one).collect(),
        other => vec![one(other)],
    }
}

#[track_caller]
fn check_answer(a: &Value, id: Option<&Value>) {
    let m = a.as_object().expect("an answer is an object");
    assert_eq!(m.get("jsonrpc"), Some(&Value::from("2.0")), "{a}");
    assert_eq!(m.get("id"), Some(id.unwrap_or(&Value::Null)), "{a}");
    match (m.get("result"), m.get("error")) {
        (Some(_), None) => {}
        (None, Some(e)) => {
            let code = e.get("code").and_then(Value::as_i64).expect("error code");
            assert_ne!(code, code::INTERNAL_ERROR, "the dispatcher panicked: {a}");
            assert!(e.get("message").is_some_and(Value::is_string), "{a}");
        }
        _ => panic!("neither result nor error, or both: {a}"),
    }
    assert_eq!(m.len(), 3, "{a}");
}
