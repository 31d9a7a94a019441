//! Maps YAML paths (`pools.inference.backends[2].address`) to line and column.
//!
//! serde_yaml does not keep positions in its `Value` tree, so the same text is run once more
//! through yaml-rust2's event parser, which reports a mark for every node.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line and column, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pos {
    pub line: usize,
    pub column: usize,
}

#[derive(Default)]
pub(super) struct Positions {
    map: HashMap<String, Pos>,
}

impl Positions {
    pub(super) fn of(text: &str) -> Self {
        let mut builder = Builder::default();
        // A syntax error is reported by serde_yaml itself; keep what was indexed until then.
        let _ = Parser::new_from_str(text).load(&mut builder, false);
        Positions { map: builder.map }
    }

    /// The position of `path`, or of its nearest ancestor that has one.
    pub(super) fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.map.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    map: HashMap<String, Pos>,
}

impl Builder {
    /// The path of the node that starts now, advancing the parent's state.
    fn next_path(&mut self, scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                }),
                None => {
                    // This node is a key: remember it and point the key's own path at it.
                    let k = scalar.unwrap_or("?").to_string();
                    *key = Some(k);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos {
            line: mark.line(),
            column: mark.col() + 1,
        };
        match ev {
            Event::Scalar(ref value, ..) => {
                let is_key = matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
                let path = self.next_path(Some(value));
                if let Some(p) = path {
                    self.map.entry(p).or_insert(pos);
                } else if is_key {
                    if let Some(Frame::Map { path, key: Some(k) }) = self.stack.last() {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        self.map.insert(p, pos);
                    }
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.next_path(None) {
                    self.map.entry(p).or_insert(pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = self.next_path(None).unwrap_or_default();
                self.map.entry(path.clone()).or_insert(pos);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_paths() {
        let text =
            "pools:\n  a:\n    backends:\n      - address: x\n      - {address: y}\nroutes: []\n";
        let p = Positions::of(text);
        assert_eq!(
            p.find("pools.a.backends[1].address"),
            Some(Pos {
                line: 5,
                column: 10
            })
        );
        assert_eq!(
            p.find("pools.a.backends[0].address"),
            Some(Pos { line: 4, column: 9 })
        );
        assert_eq!(p.find("routes").map(|p| p.line), Some(6));
        assert_eq!(p.find("pools.a.nope").map(|p| p.line), Some(2));
    }
}
