//! Probes the sandbox: tries to read, write and list paths, to read
//! environment variables and to open TCP connections, and reports what
//! happened to each attempt without failing. The tests feed it escape
//! attempts (`../`, absolute paths, planted symlinks, loopback sockets) and
//! assert every one was refused.
//!
//! Input: `{"read": [paths], "write": [paths], "list": [paths], "env": [names],
//! "connect": ["127.0.0.1:port"]}`.
//! Output: `{"read": {path: outcome}, ...}` where an outcome is
//! `"ok:<detail>"` or `"err:<io error kind>"`.

use coderclaw_sdk::{SkillError, skill};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::fs;

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Input {
    read: Vec<String>,
    write: Vec<String>,
    list: Vec<String>,
    env: Vec<String>,
    connect: Vec<String>,
}

fn outcome<T>(r: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> Value {
    match r {
        Ok(v) => Value::String(format!("ok:{}", ok(v))),
        Err(e) => Value::String(format!("err:{:?}", e.kind())),
    }
}

#[skill]
fn run(input: Input) -> Result<Value, SkillError> {
    let mut read = Map::new();
    for p in &input.read {
        read.insert(p.clone(), outcome(fs::read(p), |b| b.len().to_string()));
    }
    let mut write = Map::new();
    for p in &input.write {
        write.insert(p.clone(), outcome(fs::write(p, b"written by fs-escape"), |()| "written".into()));
    }
    let mut list = Map::new();
    for p in &input.list {
        list.insert(p.clone(), outcome(fs::read_dir(p).map(|d| d.count()), |n| n.to_string()));
    }
    let mut env = Map::new();
    for name in &input.env {
        env.insert(name.clone(), std::env::var(name).map(Value::String).unwrap_or(Value::Null));
    }
    let mut connect = Map::new();
    for addr in &input.connect {
        connect.insert(addr.clone(), outcome(std::net::TcpStream::connect(addr.as_str()), |_| "connected".into()));
    }
    let all_env_names: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    Ok(
        json!({ "read": read, "write": write, "list": list, "env": env, "connect": connect, "all_env_names": all_env_names }),
    )
}
