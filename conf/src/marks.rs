//! Where every key and value of a YAML document sits in the file.
//!
//! serde tells us *what* is wrong by path (`pools.0.backends.1.weight`); this index
//! turns that path back into a line and column. It is built from the parser's own
//! events, so it sees exactly what serde_yaml saw.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// A position and the byte offset it came from, to tell which of two comes first.
#[derive(Debug, Clone, Copy)]
struct At {
    index: usize,
}

impl Pos {
    fn from_marker(m: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos {
            line: m.line().max(1),
            col: m.col() + 1,
        }
    }
}

/// Positions by dotted path: `.key` for the key itself, the bare path for its value.
#[derive(Debug, Default)]
pub struct Marks {
    keys: HashMap<String, Pos>,
    values: HashMap<String, Pos>,
}

impl Marks {
    /// Indexes `text`. A document the scanner cannot read yields an empty index:
    /// serde_yaml reports that error with its own position.
    pub fn index(text: &str) -> Marks {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Marks::default();
        }
        builder.marks
    }

    /// Where the value at `path` starts; falls back to its nearest parent, then 1:1.
    pub fn value(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p) {
                return *pos;
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => {
                    return self
                        .values
                        .get(p)
                        .copied()
                        .unwrap_or(Pos { line: 1, col: 1 })
                }
            }
        }
    }

    /// Where the key at `path` is written (for unknown keys); else where its value is.
    pub fn key(&self, path: &str) -> Pos {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.value(path))
    }
}

enum Frame {
    Map {
        path: String,
        pending_key: Option<String>,
        keys_seen: usize,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    marks: Marks,
    starts: HashMap<String, At>,
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

impl Builder {
    /// The path a new value takes in the current container, or None when the event
    /// is a mapping key.
    fn value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = join(path, &next.to_string());
                *next += 1;
                Some(p)
            }
            Some(Frame::Map {
                path, pending_key, ..
            }) => pending_key.take().map(|k| join(path, &k)),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match ev {
            Event::Scalar(text, ..) => match self.value_path() {
                Some(path) => {
                    self.marks.values.insert(path, pos);
                }
                None => {
                    if let Some(Frame::Map {
                        path,
                        pending_key,
                        keys_seen,
                    }) = self.stack.last_mut()
                    {
                        self.marks.keys.insert(join(path, &text), pos);
                        // libyaml marks a block mapping after its first key; point at
                        // the key, where a reader sees the mapping start.
                        if *keys_seen == 0 {
                            if let Some(start) = self.starts.get(path.as_str()) {
                                if mark.index() < start.index {
                                    self.marks.values.insert(path.clone(), pos);
                                }
                            }
                        }
                        *keys_seen += 1;
                        *pending_key = Some(text);
                    }
                }
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A complex key (a map used as a key) has no path; index it under "?".
                let path = self.value_path().unwrap_or_else(|| "?".to_string());
                self.marks.values.insert(path.clone(), pos);
                self.starts.insert(
                    path.clone(),
                    At {
                        index: mark.index(),
                    },
                );
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map {
                        path,
                        pending_key: None,
                        keys_seen: 0,
                    }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.value_path();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_values() {
        let text =
            "a: 1\npools:\n  - name: web\n    backends:\n      - address: x\n        weight: 0\n";
        let m = Marks::index(text);
        assert_eq!(m.value("a"), Pos { line: 1, col: 4 });
        assert_eq!(m.key("pools.0.name"), Pos { line: 3, col: 5 });
        assert_eq!(
            m.value("pools.0.backends.0.weight"),
            Pos { line: 6, col: 17 }
        );
        assert_eq!(m.key("pools.0.backends.0.weight"), Pos { line: 6, col: 9 });
        // A defaulted key falls back to its parent mapping.
        assert_eq!(
            m.value("pools.0.health_check.rise"),
            Pos { line: 3, col: 5 }
        );
    }
}
