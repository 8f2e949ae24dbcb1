//! Wire compatibility: each type reads JSON exactly as the server wrote it
//! before the types existed (the samples copy the `json!` of the handlers
//! in `verge-control` and the requests the CLI sends) and writes the same
//! JSON back, field for field, `null` for `null` and absent for absent.
//! Requests also refuse what the server refused. One module per area.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

mod apps;
mod audit;
mod deploy;
mod error;
mod kv;
mod nodes;
mod schema;
mod scope;
mod secrets;
mod status;
mod tokens;
mod usage;
mod version;

/// Reads `wire` as the network would carry it, checks that writing the
/// result gives `wire` back exactly, and returns it.
fn check_wire<T: Serialize + DeserializeOwned>(wire: Value) -> T {
    let typed = read::<T>(&wire);
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(back, wire, "written back differently");
    typed
}

/// Reads `wire` as the network would carry it.
fn read<T: DeserializeOwned>(wire: &Value) -> T {
    serde_json::from_str(&wire.to_string()).unwrap_or_else(|e| panic!("cannot read {wire}: {e}"))
}

/// The error reading `wire` as `T`, which must fail.
fn refused<T: DeserializeOwned + Debug>(wire: Value) -> String {
    match serde_json::from_str::<T>(&wire.to_string()) {
        Ok(typed) => panic!("{wire} was read as {typed:?}; it must be refused"),
        Err(e) => e.to_string(),
    }
}

/// `value` as JSON.
fn written<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("serialize")
}
