//! The module graph goes one way: `config` ← `runtime` ← `proxy` / `tcp` / `admin` ←
//! `serve` ← `main`. A `crate::` path that reaches up (or sideways between the request
//! paths) fails here, so the layout in docs/design.md stays true of the code.

use std::path::{Path, PathBuf};

/// Each top-level module's layer; a module may use only modules of a lower layer (and
/// itself).
const LAYERS: &[(&str, u8)] = &[
    ("metrics", 0),
    ("logsink", 1),
    ("config", 1),
    ("tls", 2),
    ("proxy_protocol", 2),
    ("process_log", 2),
    ("runtime", 3),
    ("proxy", 4),
    ("tcp", 4),
    ("admin", 4),
    ("handover", 4),
    ("serve", 5),
    ("cli", 5),
    ("fleet", 5),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`src/runtime/pool.rs` → `runtime`).
fn owner(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Every `crate::NAME` in the text, outside comments.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((n + 1, name));
            }
            rest = after;
        }
    }
    found
}

#[test]
fn no_module_reaches_up_the_graph() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = owner(&src, file) else {
            continue;
        };
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(mine) = layer(&module) else {
            wrong.push(format!(
                "{}: module {module} has no layer in tests/layering.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read");
        for (line, used) in crate_paths(&text) {
            if used == module {
                continue;
            }
            match layer(&used) {
                Some(theirs) if theirs < mine => {}
                _ => wrong.push(format!(
                    "{}:{line}: {module} uses crate::{used}",
                    file.strip_prefix(&src).unwrap_or(file).display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "uses against the module order:\n{}",
        wrong.join("\n")
    );
}
