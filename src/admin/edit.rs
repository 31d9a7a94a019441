//! Edits of the raw YAML document. The file is parsed without `${VAR}` substitution and
//! written back from that tree, so placeholders stay placeholders and no secret from the
//! environment can reach the file or its history. Comments are not kept (the previous file
//! is in the history).

use super::{json_reply, Reply};
use crate::config::{self, HostPort, Loaded};
use crate::runtime::{State, WriteError};
use serde::Deserialize;
use serde_json::json;
use serde_yaml::{Mapping, Value};

fn utf8(body: &[u8]) -> Result<&str, WriteError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| WriteError::BadRequest("the body is not UTF-8 text".into()))?;
    if text.trim().is_empty() {
        return Err(WriteError::BadRequest(
            "the body is empty; send the whole YAML file".into(),
        ));
    }
    Ok(text)
}

/// `POST /config`: the body is the whole new file.
pub(super) fn whole(body: &[u8]) -> Result<String, WriteError> {
    utf8(body).map(str::to_string)
}

/// `POST /config/validate`.
pub(super) fn validate(state: &State, body: &[u8]) -> Reply {
    let text = match utf8(body) {
        Ok(t) => t,
        Err(e) => return super::write_error(&e),
    };
    match config::parse(
        text,
        &config::process_env,
        Some(&|c| crate::tls::check_files(c, state.path.parent())),
    ) {
        Ok(loaded) => {
            let changes = config::diff::summarize(&state.snapshot().loaded.config, &loaded.config);
            json_reply(
                200,
                json!({"valid": true, "hash": loaded.hash, "changes": changes}),
            )
        }
        Err(e) => super::write_error(&WriteError::Invalid(e)),
    }
}

/// Why the `next` config would shut out the callers of the admin API that `running` serves,
/// if it would: its key is gone (every call would be 401, with no way back but a hand edit of
/// the file), or its address is no longer set (the listener would move to the default at the
/// next restart). A deliberate change of key or address is not refused.
pub(super) fn closes_admin(running: &Loaded, next: &Loaded) -> Option<String> {
    let (was, now) = (&running.config.admin, &next.config.admin);
    if was.api_key.is_some() && now.api_key.is_none() {
        return Some(
            "the new config has no admin.api_key: the admin API would answer 401 to every call \
             until the file is edited by hand"
                .into(),
        );
    }
    let sets_listen = serde_yaml::from_str::<Value>(&next.raw)
        .ok()
        .is_some_and(|doc| doc.get("admin").and_then(|a| a.get("listen")).is_some());
    if now.listen != was.listen && !sets_listen {
        return Some(format!(
            "the new config has no admin.listen: at the next restart the admin API would leave \
             {} for the default {}",
            was.listen, now.listen
        ));
    }
    None
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollback {
    version: String,
}

/// `POST /config/rollback` `{"version": …}`: the text of a kept version.
pub(super) fn rollback_target(state: &State, body: &[u8]) -> Result<String, WriteError> {
    let r: Rollback = serde_json::from_slice(body)
        .map_err(|e| WriteError::BadRequest(format!("expected {{\"version\": \"…\"}}: {e}")))?;
    state
        .history()
        .get(&r.version)
        .ok_or_else(|| WriteError::NotFound(format!("no kept version {:?}", r.version)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBackend {
    address: String,
    weight: Option<u64>,
    models: Option<Vec<String>>,
}

fn document(raw: &str) -> Result<Value, WriteError> {
    let doc: Value = serde_yaml::from_str(raw)
        .map_err(|e| WriteError::BadRequest(format!("the file on disk does not parse: {e}")))?;
    match doc {
        Value::Null => Ok(Value::Mapping(Mapping::new())),
        d => Ok(d),
    }
}

fn render(doc: &Value) -> Result<String, WriteError> {
    serde_yaml::to_string(doc)
        .map_err(|e| WriteError::BadRequest(format!("cannot write YAML: {e}")))
}

/// The `backends` list of `pool` in the raw document (created if the pool has none yet).
fn backends<'a>(doc: &'a mut Value, pool: &str) -> Result<&'a mut Vec<Value>, WriteError> {
    let missing = || WriteError::NotFound(format!("no pool named {pool:?}"));
    let pool = doc
        .get_mut("pools")
        .and_then(|p| p.get_mut(pool))
        .ok_or_else(missing)?;
    let map = pool.as_mapping_mut().ok_or_else(missing)?;
    let list = map
        .entry(Value::from("backends"))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if list.is_null() {
        *list = Value::Sequence(Vec::new());
    }
    list.as_sequence_mut()
        .ok_or_else(|| WriteError::BadRequest("backends is not a list in the file".into()))
}

fn address_of(entry: &Value) -> Option<&str> {
    entry.get("address").and_then(Value::as_str)
}

fn position(list: &[Value], pool: &str, address: &str) -> Result<usize, WriteError> {
    list.iter()
        .position(|b| address_of(b) == Some(address))
        .ok_or_else(|| WriteError::NotFound(format!("pool {pool:?} has no backend {address}")))
}

pub(super) fn add_backend(raw: &str, pool: &str, body: &[u8]) -> Result<String, WriteError> {
    let new: NewBackend = serde_json::from_slice(body).map_err(|e| {
        WriteError::BadRequest(format!(
            "expected {{\"address\", \"weight\"?, \"models\"?}}: {e}"
        ))
    })?;
    HostPort::parse(&new.address).map_err(WriteError::BadRequest)?;
    let mut doc = document(raw)?;
    let list = backends(&mut doc, pool)?;
    if list
        .iter()
        .any(|b| address_of(b) == Some(new.address.as_str()))
    {
        return Err(WriteError::Conflict(format!(
            "pool {pool:?} already has backend {}",
            new.address
        )));
    }
    let mut entry = Mapping::new();
    entry.insert("address".into(), new.address.into());
    if let Some(w) = new.weight {
        entry.insert("weight".into(), w.into());
    }
    if let Some(models) = new.models {
        entry.insert("models".into(), models.into());
    }
    list.push(Value::Mapping(entry));
    render(&doc)
}

pub(super) fn remove_backend(raw: &str, pool: &str, address: &str) -> Result<String, WriteError> {
    let mut doc = document(raw)?;
    let list = backends(&mut doc, pool)?;
    let at = position(list, pool, address)?;
    list.remove(at);
    render(&doc)
}

pub(super) fn drain_backend(raw: &str, pool: &str, address: &str) -> Result<String, WriteError> {
    let mut doc = document(raw)?;
    let list = backends(&mut doc, pool)?;
    let at = position(list, pool, address)?;
    let entry = list[at]
        .as_mapping_mut()
        .ok_or_else(|| WriteError::BadRequest("a backend entry is not a map in the file".into()))?;
    entry.insert("drain".into(), true.into());
    render(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str =
        "version: 1\npools:\n  p:\n    backends:\n      - {address: \"127.0.0.1:1\", api_key: \"${KEY}\"}\n";

    #[test]
    fn edits_keep_placeholders() {
        let out = add_backend(RAW, "p", br#"{"address": "127.0.0.1:2", "weight": 3}"#).unwrap();
        assert!(out.contains("${KEY}"));
        assert!(out.contains("127.0.0.1:2"));
        let out = drain_backend(&out, "p", "127.0.0.1:1").unwrap();
        assert!(out.contains("drain: true"));
        let out = remove_backend(&out, "p", "127.0.0.1:2").unwrap();
        assert!(!out.contains("127.0.0.1:2"));
    }

    fn loaded(text: &str) -> Loaded {
        config::parse(text, &|_| None, None).unwrap()
    }

    #[test]
    fn a_config_without_admin_key_or_listen_closes_the_admin_api() {
        let key = "k".repeat(32);
        let running = loaded(&format!(
            "version: 1\nadmin: {{listen: 127.0.0.1:7001, api_key: {key}}}\n"
        ));
        for (next, closes) in [
            ("version: 1\n".to_string(), true),
            ("version: 1\nadmin: {listen: 127.0.0.1:7001}\n".into(), true),
            (format!("version: 1\nadmin: {{api_key: {key}}}\n"), true),
            (
                format!("version: 1\nadmin: {{listen: 127.0.0.1:7002, api_key: {key}}}\n"),
                false,
            ),
            (
                format!(
                    "version: 1\nadmin: {{listen: 127.0.0.1:7001, api_key: {}}}\n",
                    "n".repeat(32)
                ),
                false,
            ),
        ] {
            assert_eq!(
                closes_admin(&running, &loaded(&next)).is_some(),
                closes,
                "{next}"
            );
        }
        // On the default address, leaving admin.listen out moves nothing.
        let default = loaded(&format!("version: 1\nadmin: {{api_key: {key}}}\n"));
        let next = loaded(&format!(
            "version: 1\nadmin: {{api_key: {key}, history: 3}}\n"
        ));
        assert!(closes_admin(&default, &next).is_none());
        // An API without a key is closed already: nothing more to lose.
        let closed = loaded("version: 1\n");
        assert!(closes_admin(&closed, &closed).is_none());
    }

    #[test]
    fn refuses_duplicates_unknown_pools_and_bad_bodies() {
        assert!(matches!(
            add_backend(RAW, "p", br#"{"address": "127.0.0.1:1"}"#),
            Err(WriteError::Conflict(_))
        ));
        assert!(matches!(
            add_backend(RAW, "q", br#"{"address": "127.0.0.1:9"}"#),
            Err(WriteError::NotFound(_))
        ));
        assert!(matches!(
            add_backend(RAW, "p", b"\xff\x00"),
            Err(WriteError::BadRequest(_))
        ));
        assert!(matches!(
            add_backend(RAW, "p", br#"{"address": "nope"}"#),
            Err(WriteError::BadRequest(_))
        ));
        assert!(matches!(
            remove_backend(RAW, "p", "1.1.1.1:1"),
            Err(WriteError::NotFound(_))
        ));
    }
}
