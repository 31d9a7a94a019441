//! The configuration file: parsing, `${VAR}` interpolation, validation, storage.
//!
//! `parse` turns text into a [`Config`] or into every problem found, each with its YAML path
//! and, where the parser kept it, line and column. The file is read leniently first (a bad
//! CIDR, address or key is kept as rejected text, see `stage.rs`) so that validation reports
//! every problem at once; a config without problems is then read as [`Checked`] types.

#[macro_use]
mod stage;
mod acme;
mod address;
mod admission;
pub mod diff;
mod edge;
mod env;
mod locate;
mod placement;
mod route;
pub mod schema;
mod secret;
pub mod store;
mod store_redis;
mod types;
pub mod units;
mod validate;
pub mod values;

pub use acme::*;
pub use address::{split_host_port, HostPort};
pub use admission::*;
pub use edge::*;
pub use env::{process_env, substitute};
pub use placement::*;
pub use route::*;
pub use secret::{Bearer, Secret};
pub use stage::{Checked, Lenient, Parsed, Stage, Text};
pub use store_redis::*;
pub use types::*;
pub use values::{
    Cidr, HashOn, HeaderKey, HeaderText, HostPattern, LogField, MethodName, RateLimitKey, RetryOn,
    TlsVersion,
};

use locate::Positions;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

/// One thing wrong with a config, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    /// `LINE:COL: path: message`, the form `switchyard check` prints after the file name.
    pub fn located(&self) -> String {
        let at = match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{l}:{c}: "),
            _ => String::new(),
        };
        if self.path.is_empty() {
            format!("{at}{}", self.message)
        } else {
            format!("{at}{}: {}", self.path, self.message)
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.located())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(Problem::located).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Read { path, source } => {
                vec![Problem::new("", format!("cannot read {path}: {source}"))]
            }
            ConfigError::Invalid(p) => p.clone(),
        }
    }

    /// Every problem as `FILE:LINE:COL: message`, one per line.
    pub fn render(&self, file: &str) -> String {
        match self {
            ConfigError::Read { .. } => self.to_string(),
            ConfigError::Invalid(p) => p
                .iter()
                .map(|p| format!("{file}:{}", p.located()))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// A validated config with the exact text it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub raw: String,
    /// sha256 of the raw bytes, hex.
    pub hash: String,
}

pub fn hash_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A check of a parsed config that needs more than the config itself (files on disk, such
/// as certificates); its problems are reported with validation's, placed the same way.
pub type FileCheck<'a> = &'a dyn Fn(&Config<Lenient>) -> Vec<Problem>;

/// Reads, parses and validates the file at `path` against the process environment.
pub fn load_file(path: &Path, files: Option<FileCheck<'_>>) -> Result<Loaded, ConfigError> {
    let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&raw, &process_env, files)
}

/// Every problem `parse` finds in `text` (no environment, no files), located: for the
/// validation tests of each part of the config.
#[cfg(test)]
pub(crate) fn problems_in(text: &str) -> Vec<String> {
    match parse(text, &|_| None, None) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().into_iter().map(|p| p.located()).collect(),
    }
}

/// Parses and validates `raw`, with `files` checking what it names on disk.
pub fn parse(
    raw: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    files: Option<FileCheck<'_>>,
) -> Result<Loaded, ConfigError> {
    // Only a file with problems needs its positions: a second parse of a large file is slow.
    let positions = std::cell::OnceCell::new();
    let locate = |mut p: Problem| {
        if p.line.is_none() {
            if let Some(pos) = positions.get_or_init(|| Positions::of(raw)).find(&p.path) {
                p.line = Some(pos.line);
                p.column = Some(pos.column);
            }
        }
        p
    };
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(raw).map_err(|e| ConfigError::Invalid(vec![yaml_problem(&e)]))?;
    top_level(&value).map_err(|p| ConfigError::Invalid(vec![p]))?;
    if let Err(missing) = env::interpolate(&mut value, lookup) {
        let problems = missing
            .into_iter()
            .map(|m| {
                locate(Problem::new(
                    m.path,
                    format!(
                        "${{{}}} has no value in the environment and no default",
                        m.var
                    ),
                ))
            })
            .collect();
        return Err(ConfigError::Invalid(problems));
    }
    let read: Config<Lenient> = typed(&value).map_err(|p| ConfigError::Invalid(vec![locate(p)]))?;
    let mut problems = validate::validate(&read);
    if let Some(check) = files {
        problems.extend(check(&read));
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(
            problems.into_iter().map(locate).collect(),
        ));
    }
    // Every value parsed in the lenient reading, with the same parser: this reading cannot
    // refuse one, and if it ever did, that is an error here, never a value left out.
    let config: Config = typed(&value).map_err(|p| ConfigError::Invalid(vec![locate(p)]))?;
    Ok(Loaded {
        config,
        raw: raw.to_string(),
        hash: hash_bytes(raw.as_bytes()),
    })
}

/// `value` read as `T`, or the serde error at its YAML path.
fn typed<T: serde::de::DeserializeOwned>(value: &serde_yaml::Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Problem::new(path, e.inner().to_string())
    })
}

/// A config is a mapping that says which format it is written in. Anything else (an empty
/// file, `null`, a list, a lone value, a mapping without `version`) is refused rather than read
/// as "everything default": that would drop every listener, pool and route, and the admin key.
fn top_level(value: &serde_yaml::Value) -> Result<(), Problem> {
    use serde_yaml::Value;
    const WANT: &str = "a config is a mapping that starts with `version: 1`";
    let what = match value {
        Value::Mapping(m) => {
            return match m.get("version") {
                Some(_) => Ok(()),
                None => Err(Problem::new(
                    "version",
                    format!("missing: {WANT} (the format version)"),
                )),
            };
        }
        Value::Null => "empty (or null)",
        Value::Sequence(_) => "a list",
        Value::Bool(_) | Value::Number(_) | Value::String(_) => "a single value",
        Value::Tagged(_) => "a tagged value",
    };
    let mut p = Problem::new("", format!("the document is {what}: {WANT}"));
    p.line = Some(1);
    p.column = Some(1);
    Err(p)
}

fn yaml_problem(e: &serde_yaml::Error) -> Problem {
    let mut p = Problem::new("", format!("YAML syntax: {e}"));
    if let Some(loc) = e.location() {
        p.line = Some(loc.line());
        p.column = Some(loc.column());
        // serde_yaml appends " at line L column C"; it is already in the position.
        if let Some(cut) = p.message.find(" at line ") {
            p.message.truncate(cut);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let l = parse("version: 1\n", &no_env, None).unwrap();
        assert_eq!(l.config.admin.listen, "127.0.0.1:9901");
        assert_eq!(l.config.server.grace_period_seconds, 10);
    }

    #[test]
    fn unknown_field_is_located() {
        let text = "version: 1\npools:\n  a:\n    backends: [{address: 127.0.0.1:1}]\n    balanse: random\n";
        let err = parse(text, &no_env, None).unwrap_err();
        let p = &err.problems()[0];
        assert!(p.message.contains("unknown field `balanse`"), "{p:?}");
        assert_eq!(p.path, "pools.a.balanse");
        assert_eq!(p.line, Some(5));
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse("version: 1\nroutes: [\n  - a\n", &no_env, None).unwrap_err();
        let p = &err.problems()[0];
        assert!(p.line.is_some() && p.column.is_some(), "{p:?}");
    }

    #[test]
    fn missing_env_var_is_an_error() {
        let text = "version: 1\nadmin:\n  api_key: ${NOPE_KEY}\n";
        let err = parse(text, &no_env, None).unwrap_err();
        let p = &err.problems()[0];
        assert_eq!(p.path, "admin.api_key");
        assert_eq!(p.line, Some(3));
    }

    #[test]
    fn every_rejected_value_is_reported_and_a_checked_config_keeps_every_entry() {
        let digest = "a".repeat(64);
        let text = "version: 1\nadmin: {api_key: \"sha256:12\"}\n\
             pools:\n  p:\n    backends:\n      - {address: \"x y:1\", api_key: \"a\\nb\"}\n\
             routes:\n  - name: r\n    pool: p\n    deny: [10.0.0.0/8, nope]\n\
             \x20   auth: {api_keys: [{key: \"sha256:zz\"}, short]}\n\
             edge: {allow: [1.2.3.4/40]}\n";
        let err = parse(text, &no_env, None).unwrap_err();
        let paths: Vec<String> = err.problems().into_iter().map(|p| p.path).collect();
        for want in [
            "admin.api_key",
            "pools.p.backends[0].address",
            "pools.p.backends[0].api_key",
            "routes[0].deny[1]",
            "routes[0].auth.api_keys[0]",
            "routes[0].auth.api_keys[1]",
            "edge.allow[0]",
        ] {
            assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
        }

        let text = format!(
            "version: 1\npools:\n  p:\n    backends: [{{address: \"127.0.0.1:1\"}}, {{address: \"b.internal:2\"}}]\n\
             routes:\n  - name: r\n    pool: p\n    allow: [10.0.0.0/8, 192.0.2.7, \"::1\"]\n\
             \x20   auth: {{api_keys: [\"sha256:{digest}\", {{key: 0123456789abcdef, name: k}}]}}\n"
        );
        let c = parse(&text, &no_env, None).expect("valid").config;
        let backends: Vec<String> = c.pools["p"]
            .backends
            .iter()
            .map(|b| b.address.to_string())
            .collect();
        assert_eq!(backends, ["127.0.0.1:1", "b.internal:2"]);
        let allow: Vec<String> = c.routes[0].allow.iter().map(Cidr::to_string).collect();
        assert_eq!(allow, ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]);
        let keys = &c.routes[0].auth.as_ref().expect("auth").api_keys;
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].secret().digest(), &[0xaa; 32]);
    }

    #[test]
    fn only_a_mapping_with_version_1_is_a_config() {
        for (text, path, says) in [
            ("", "", "empty"),
            ("null\n", "", "empty"),
            ("~\n", "", "empty"),
            ("# only a comment\n", "", "empty"),
            ("{}\n", "version", "missing"),
            ("admin: {listen: 127.0.0.1:1}\n", "version", "missing"),
            ("- version: 1\n", "", "a list"),
            ("[]\n", "", "a list"),
            ("1\n", "", "a single value"),
            ("version\n", "", "a single value"),
            ("!config {version: 1}\n", "", "a tagged value"),
            ("version: 2\n", "version", "only version 1"),
            ("version: null\n", "version", "invalid type"),
            ("version: \"1\"\n", "version", "invalid type"),
        ] {
            let err = parse(text, &no_env, None).expect_err(text);
            let p = &err.problems()[0];
            assert_eq!(p.path, path, "{text:?}: {p:?}");
            assert!(p.message.contains(says), "{text:?}: {p:?}");
        }
        let e = parse("[]\n", &no_env, None).unwrap_err();
        assert!(e.to_string().contains("version: 1"), "{e}");
        assert!(parse("version: 1\n", &no_env, None).is_ok());
    }
}
