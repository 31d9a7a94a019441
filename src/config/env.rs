//! `${VAR}` and `${VAR:-default}` interpolation inside string values.
//!
//! Substitution runs on the parsed YAML tree, never on the raw text, so an environment value
//! can only ever become (part of) one string: it cannot add keys or change the structure.

use serde_yaml::Value;

/// One placeholder that had neither a value nor a default.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MissingVar {
    pub path: String,
    pub var: String,
}

/// Replaces placeholders in every string of `value`, looking variables up with `lookup`.
pub(super) fn interpolate(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Vec<MissingVar>> {
    let mut missing = Vec::new();
    walk(value, String::new(), lookup, &mut missing);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

fn walk(
    value: &mut Value,
    path: String,
    lookup: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<MissingVar>,
) {
    match value {
        Value::String(s) if s.contains("${") => match substitute(s, lookup) {
            Ok(new) => *s = new,
            Err(vars) => missing.extend(vars.into_iter().map(|var| MissingVar {
                path: path.clone(),
                var,
            })),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{path}[{i}]"), lookup, missing);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                walk(v, child, lookup, missing);
            }
        }
        Value::Tagged(t) => walk(&mut t.value, path, lookup, missing),
        _ => {}
    }
}

/// Substitutes the placeholders of one string. `$${` is a literal `${`.
pub fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match lookup(name)
            .filter(|v| !v.is_empty())
            .or(default.map(str::to_string))
        {
            Some(v) => out.push_str(&v),
            None => missing.push(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

/// The process environment as a lookup function.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_values_and_defaults() {
        assert_eq!(substitute("x-${A}-y", &env).unwrap(), "x-alpha-y");
        assert_eq!(substitute("${B:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(substitute("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(substitute("$${A}", &env).unwrap(), "${A}");
        assert_eq!(substitute("${B}", &env).unwrap_err(), vec!["B".to_string()]);
    }

    #[test]
    fn values_cannot_change_structure() {
        let mut v: Value = serde_yaml::from_str("a: {b: '${X}'}").unwrap();
        let lookup = |_: &str| Some("1\nc: 2".to_string());
        interpolate(&mut v, &lookup).unwrap();
        assert_eq!(v["a"]["b"], Value::String("1\nc: 2".into()));
        assert!(v["c"].is_null());
    }

    #[test]
    fn reports_paths() {
        let mut v: Value = serde_yaml::from_str("a: [x, '${NOPE}']").unwrap();
        let err = interpolate(&mut v, &env).unwrap_err();
        assert_eq!(err[0].path, "a[1]");
        assert_eq!(err[0].var, "NOPE");
    }
}
