//! The method table: a JSON-RPC method name and its `params` in, the JSON
//! `result` (or an [`ApiError`]) out. Transport-free, so the socket server,
//! tests and anything else that speaks JSON share one decoder.
//!
//! Parameters are by-name only (JSON-RPC 2.0 section 4.2 allows by-position
//! arrays; no method here has a natural order). Methods without parameters
//! also take absent, `null`, `{}` or `[]`. A method that returns nothing
//! answers `true`.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::api::{code, Api, ApiError, StatsQuery};

/// Every method [`dispatch`] knows, in documentation order.
pub const METHODS: &[&str] = &[
    "controller_create",
    "controller_delete",
    "controller_list",
    "lun_add",
    "lun_remove",
    "lun_resize",
    "stats",
    "version",
    "shutdown",
];

/// Run `method` with `params` on `api`: decode the parameters into the
/// method's type (errors: [`code::INVALID_PARAMS`] naming the field),
/// call it and encode its result. An unknown method is
/// [`code::METHOD_NOT_FOUND`].
pub fn dispatch(api: &dyn Api, method: &str, params: Option<Value>) -> Result<Value, ApiError> {
    match method {
        "controller_create" => encode(api.controller_create(decode(method, params)?)),
        "controller_delete" => encode(api.controller_delete(decode(method, params)?)),
        "controller_list" => {
            no_params(method, params)?;
            encode(api.controller_list())
        }
        "lun_add" => encode(api.lun_add(decode(method, params)?)),
        "lun_remove" => encode(api.lun_remove(decode(method, params)?)),
        "lun_resize" => encode(api.lun_resize(decode(method, params)?)),
        "stats" => {
            let query = if is_empty(&params) {
                StatsQuery::default()
            } else {
                decode(method, params)?
            };
            encode(api.stats(query))
        }
        "version" => {
            no_params(method, params)?;
            encode(api.version())
        }
        "shutdown" => {
            no_params(method, params)?;
            encode(api.shutdown())
        }
        _ => Err(ApiError::new(
            code::METHOD_NOT_FOUND,
            format!("unknown method `{method}`"),
        )),
    }
}

/// Absent, `null`, `{}` or `[]`.
fn is_empty(params: &Option<Value>) -> bool {
    match params {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

fn no_params(method: &str, params: Option<Value>) -> Result<(), ApiError> {
    if is_empty(&params) {
        Ok(())
    } else {
        Err(ApiError::invalid_params(format!(
            "invalid params: `{method}` takes no parameters"
        )))
    }
}

/// Decode by-name parameters into `T`. Absent or `null` params are an
/// empty object, so the error names the first missing field.
fn decode<T: DeserializeOwned>(method: &str, params: Option<Value>) -> Result<T, ApiError> {
    let object = match params {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid_params(format!(
                "invalid params: `{method}` takes its parameters by name (an object), not an array"
            )))
        }
        Some(other) => {
            return Err(ApiError::invalid_params(format!(
                "invalid params: `{method}` takes an object, not {}",
                kind(&other)
            )))
        }
    };
    match serde_json::from_value::<T>(Value::Object(object.clone())) {
        Ok(v) => Ok(v),
        Err(e) => Err(ApiError::invalid_params(format!(
            "invalid params: {}",
            describe::<T>(&object, &e)
        ))),
    }
}

/// serde's message, with the field named when serde does not name it
/// (a wrong type or an out-of-range value).
///
/// The parameter types are flat structs whose derived `Deserialize`
/// stops at the first bad value and checks for missing fields only at the
/// end. So decoding ever longer prefixes of the object, the first prefix
/// that fails with something other than a missing field ends with the
/// culprit.
fn describe<T: DeserializeOwned>(object: &Map<String, Value>, e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if !msg.starts_with("invalid ") {
        // "missing field `x`", "unknown field `x`, expected ..." name it.
        return msg;
    }
    let mut prefix = Map::new();
    for (key, value) in object {
        prefix.insert(key.clone(), value.clone());
        if let Err(e) = serde_json::from_value::<T>(Value::Object(prefix.clone())) {
            let m = e.to_string();
            if m.starts_with("invalid ") {
                return format!("field `{key}`: {m}");
            }
        }
    }
    msg
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

/// The JSON `result`: the value, or `true` for methods returning nothing.
fn encode<T: Serialize>(r: Result<T, ApiError>) -> Result<Value, ApiError> {
    let v = serde_json::to_value(r?).map_err(|e| {
        ApiError::new(
            code::INTERNAL_ERROR,
            format!("cannot encode the result: {e}"),
        )
    })?;
    Ok(if v.is_null() { Value::Bool(true) } else { v })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::mgmt::api::*;

    /// Records every call; answers from canned data.
    #[derive(Default)]
    pub(crate) struct Mock {
        pub calls: Mutex<Vec<String>>,
    }

    impl Mock {
        fn log(&self, s: String) {
            self.calls.lock().unwrap().push(s);
        }
    }

    pub(crate) fn lun_info(lun: u16) -> LunInfo {
        LunInfo {
            lun,
            path: PathBuf::from("/img/a.img"),
            readonly: false,
            block_size: 512,
            num_blocks: 131072,
            size: 64 << 20,
            serial: "s".into(),
            passthrough: false,
        }
    }

    impl Api for Mock {
        fn controller_create(&self, p: ControllerCreate) -> Result<ControllerInfo, ApiError> {
            self.log(format!("create {p:?}"));
            Ok(ControllerInfo {
                name: p.name,
                socket: p.socket,
                num_queues: p.num_queues.unwrap_or(4),
                queue_size: p.queue_size.unwrap_or(256),
                initiator: None,
                socket_group: None,
                socket_mode: None,
                poll_max_us: 32,
                connected: false,
                state: "listening".into(),
                last_error: None,
                luns: vec![],
            })
        }
        fn controller_delete(&self, p: ControllerDelete) -> Result<(), ApiError> {
            self.log(format!("delete {p:?}"));
            if p.name == "busy" && !p.force {
                return Err(ApiError::busy("controller `busy` has a guest connected"));
            }
            Ok(())
        }
        fn controller_list(&self) -> Result<Vec<ControllerInfo>, ApiError> {
            self.log("list".into());
            Ok(vec![])
        }
        fn lun_add(&self, p: LunAdd) -> Result<LunInfo, ApiError> {
            self.log(format!("add {p:?}"));
            Ok(lun_info(p.lun.unwrap_or(0)))
        }
        fn lun_remove(&self, p: LunRemove) -> Result<(), ApiError> {
            self.log(format!("remove {p:?}"));
            Ok(())
        }
        fn lun_resize(&self, p: LunResize) -> Result<LunInfo, ApiError> {
            self.log(format!("resize {p:?}"));
            Ok(lun_info(p.lun))
        }
        fn stats(&self, p: StatsQuery) -> Result<Stats, ApiError> {
            self.log(format!("stats {p:?}"));
            Ok(Stats::default())
        }
        fn shutdown(&self) -> Result<(), ApiError> {
            self.log("shutdown".into());
            Ok(())
        }
    }

    fn call(method: &str, params: Value) -> Result<Value, ApiError> {
        dispatch(&Mock::default(), method, Some(params))
    }

    fn invalid(method: &str, params: Value) -> String {
        let e = call(method, params).unwrap_err();
        assert_eq!(e.code, code::INVALID_PARAMS, "{e}");
        e.message
    }

    #[test]
    fn every_method_with_good_params() {
        let mock = Mock::default();
        let cases = [
            (
                "controller_create",
                json!({"name": "vm1", "socket": "/s", "num_queues": 2}),
            ),
            ("controller_delete", json!({"name": "vm1", "force": true})),
            ("controller_list", json!({})),
            (
                "lun_add",
                json!({"controller": "vm1", "path": "/a", "lun": 3, "readonly": true,
                       "block_size": 4096, "serial": "x"}),
            ),
            ("lun_remove", json!({"controller": "vm1", "lun": 3})),
            (
                "lun_resize",
                json!({"controller": "vm1", "lun": 3, "size": 1_u64 << 40}),
            ),
            ("stats", json!({"controller": "vm1"})),
            ("version", json!([])),
            ("shutdown", Value::Null),
        ];
        for (m, p) in cases {
            dispatch(&mock, m, Some(p)).unwrap_or_else(|e| panic!("{m}: {e}"));
        }
        for m in ["controller_list", "stats", "version", "shutdown"] {
            dispatch(&mock, m, None).unwrap();
        }
        let calls = mock.calls.lock().unwrap();
        // `version` is the trait default: not logged.
        assert_eq!(calls.len(), 11);
        assert!(calls[0].contains("num_queues: Some(2)"), "{}", calls[0]);
        assert!(calls[3].contains("block_size: Some(4096)"), "{}", calls[3]);
        assert!(
            calls[5].contains("size: Some(1099511627776)"),
            "{}",
            calls[5]
        );
    }

    #[test]
    fn results_are_encoded() {
        let v = call("controller_create", json!({"name": "vm1", "socket": "/s"})).unwrap();
        assert_eq!(v["name"], "vm1");
        assert_eq!(v["num_queues"], 4);
        assert_eq!(v["luns"], json!([]));
        assert_eq!(
            call("lun_remove", json!({"controller": "c", "lun": 1})).unwrap(),
            json!(true)
        );
        assert_eq!(call("controller_list", json!({})).unwrap(), json!([]));
        assert_eq!(
            call("version", json!({})).unwrap()["name"],
            env!("CARGO_PKG_NAME")
        );
        assert_eq!(
            call("stats", json!([])).unwrap(),
            json!({"controllers": []})
        );
    }

    #[test]
    fn api_errors_pass_through() {
        let e = call("controller_delete", json!({"name": "busy"})).unwrap_err();
        assert_eq!(e.code, code::BUSY);
    }

    #[test]
    fn missing_field() {
        let m = invalid("lun_add", json!({"controller": "vm1"}));
        assert_eq!(m, "invalid params: missing field `path`");
        let m = invalid("controller_create", Value::Null);
        assert!(m.contains("missing field `name`"), "{m}");
        let m = dispatch(&Mock::default(), "lun_remove", None).unwrap_err();
        assert!(m.message.contains("missing field"), "{m}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let m = invalid(
            "lun_add",
            json!({"controller": "vm1", "path": "/a", "lun": "three"}),
        );
        assert!(
            m.starts_with("invalid params: field `lun`: invalid type"),
            "{m}"
        );
        let m = invalid("lun_remove", json!({"controller": "vm1", "lun": 70000}));
        assert!(
            m.starts_with("invalid params: field `lun`: invalid value"),
            "{m}"
        );
        let m = invalid("controller_delete", json!({"name": 5}));
        assert!(m.contains("field `name`"), "{m}");
        let m = invalid("stats", json!({"lun": -1}));
        assert!(m.contains("field `lun`"), "{m}");
    }

    #[test]
    fn unknown_field() {
        let m = invalid("lun_remove", json!({"controller": "c", "lun": 1, "lnu": 2}));
        assert!(m.contains("unknown field `lnu`"), "{m}");
        let m = invalid("stats", json!({"controler": "c"}));
        assert!(m.contains("unknown field `controler`"), "{m}");
    }

    #[test]
    fn params_must_be_by_name() {
        let m = invalid("lun_remove", json!(["c", 1]));
        assert!(m.contains("by name"), "{m}");
        let m = invalid("lun_remove", json!("c"));
        assert!(m.contains("not a string"), "{m}");
        for method in ["controller_list", "version", "shutdown"] {
            let m = invalid(method, json!({"x": 1}));
            assert!(m.contains("takes no parameters"), "{m}");
            let m = invalid(method, json!([1]));
            assert!(m.contains("takes no parameters"), "{m}");
        }
        let m = invalid("stats", json!(["vm1"]));
        assert!(m.contains("by name"), "{m}");
    }

    #[test]
    fn unknown_method() {
        let e = call("foo", json!({})).unwrap_err();
        assert_eq!(e.code, code::METHOD_NOT_FOUND);
        assert_eq!(e.message, "unknown method `foo`");
    }

    #[test]
    fn methods_table_is_complete() {
        for m in METHODS {
            let e = call(m, json!({})).err();
            assert!(e.map_or(true, |e| e.code != code::METHOD_NOT_FOUND), "{m}");
        }
    }
}
