//! The config reference: every key the schema accepts, with its type, its default,
//! its bounds and what it means, grouped by section. `docs/reference.md` and
//! `docs/man/vigil.yaml.5` are generated from it ([`markdown`], [`man_page`]).
//!
//! Defaults and bounds are not written here but taken from `defaults` and `bounds`,
//! the constants validation uses. The tests (`conf/tests/reference.rs`) check that the
//! keys listed are exactly those the schema accepts ([`schema_keys`]), that writing
//! each documented default gives the same configuration as leaving the key out, that
//! each documented bound is where validation starts refusing, and that the committed
//! documents are what this module generates.

use crate::bounds::{DurationRange, FloatRange, IntRange};
use crate::choice::Choice;
use crate::duration::format_duration;
use std::time::Duration;

mod edge;
mod health;
mod man;
mod markdown;
mod pool;
mod schema_keys;
mod top;

pub use man::man_page;
pub use markdown::markdown;
pub use schema_keys::schema_keys;

/// The command that rewrites the generated documents.
pub const REGENERATE: &str = "VIGIL_UPDATE_DOCS=1 cargo test -p vigil-conf --test reference";

/// A small file to start from, shown by both documents (and validated by the tests).
pub const EXAMPLE: &str = "\
listeners:
  - address: 127.0.0.1:8080
admin:
  address: 127.0.0.1:9901
pools:
  - name: web
    routes:
      - host: \"*.example.com\"
    backends:
      - address: 127.0.0.1:18081
      - address: 127.0.0.1:18082
        weight: 2
    health_check:
      path: /healthz
      interval: 2s
      rise: 2
      fall: 3
";

/// A group of keys under one heading, its own key first.
#[derive(Debug, Clone)]
pub struct Section {
    pub title: &'static str,
    /// What the section is for, a paragraph (markdown: `code` in backticks).
    pub about: &'static str,
    pub keys: Vec<Key>,
}

/// One key of the config file.
#[derive(Debug, Clone)]
pub struct Key {
    /// Dotted from the top, `[]` for each list: `pools[].health_check.interval`.
    pub path: &'static str,
    pub ty: Type,
    /// What leaving the key out means.
    pub default: Omitted,
    /// Every bound validation checks on the value alone (more may relate it to others).
    pub bounds: Vec<Bound>,
    /// One line (markdown: `code` in backticks).
    pub meaning: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Integer,
    Number,
    Duration,
    Boolean,
    String,
    /// `ip:port`, or `host:port` where said.
    Address,
    /// A file; relative paths are relative to the config file.
    File,
    /// One of the words in its bounds.
    Word,
    Mapping,
    ListOfMappings,
    ListOfStrings,
    ListOfIntegers,
}

impl Type {
    pub fn as_str(self) -> &'static str {
        match self {
            Type::Integer => "integer",
            Type::Number => "number",
            Type::Duration => "duration",
            Type::Boolean => "boolean",
            Type::String => "string",
            Type::Address => "address",
            Type::File => "file",
            Type::Word => "word",
            Type::Mapping => "mapping",
            Type::ListOfMappings => "list of mappings",
            Type::ListOfStrings => "list of strings",
            Type::ListOfIntegers => "list of integers",
        }
    }
}

/// What leaving a key out means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Omitted {
    /// The same as writing this YAML value (the tests check it).
    Value(String),
    /// Worked out from other keys or from the machine (markdown).
    Derived(String),
    /// The key must be written where its section is.
    Required,
    /// A section: its keys have their own defaults.
    Section,
}

/// What validation refuses for a value on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    Int(IntRange),
    Float(FloatRange),
    /// A duration of zero is refused.
    Positive,
    Duration(DurationRange),
    AtMost(Duration),
    AtLeast(Duration),
    /// One of these words.
    Words(Vec<&'static str>),
    /// Said in words (markdown): a pattern, or a relation to another key.
    Rule(String),
}

impl Bound {
    /// The bound as a short phrase (markdown: `code` in backticks).
    pub fn describe(&self) -> String {
        match self {
            Bound::Int(r) if r.max == i64::MAX => format!(">= {}", r.min),
            Bound::Int(r) => format!("{}..{}", r.min, r.max),
            Bound::Float(r) if r.max_included => format!("{}..{}", r.min, r.max),
            Bound::Float(r) => format!(">= {} and < {}", r.min, r.max),
            Bound::Positive => "> 0".into(),
            Bound::Duration(r) => {
                format!("{}..{}", format_duration(r.min), format_duration(r.max))
            }
            Bound::AtMost(d) => format!("<= {}", format_duration(*d)),
            Bound::AtLeast(d) => format!(">= {}", format_duration(*d)),
            Bound::Words(words) => {
                let quoted: Vec<String> = (words.iter())
                    .map(|w| format!("`{}`", yaml_string(w)))
                    .collect();
                quoted.join(", ")
            }
            Bound::Rule(text) => text.clone(),
        }
    }
}

impl Omitted {
    /// The default as a short phrase (markdown: `code` in backticks); "" for a section.
    pub fn describe(&self) -> String {
        match self {
            Omitted::Value(v) => format!("`{v}`"),
            Omitted::Derived(text) => text.clone(),
            Omitted::Required => "required".into(),
            Omitted::Section => String::new(),
        }
    }
}

/// Every section, in the order of the documents.
pub fn sections() -> Vec<Section> {
    let mut all = top::sections();
    all.extend(edge::sections());
    all.extend(pool::sections());
    all.extend(health::sections());
    all
}

/// Every key, section by section.
pub fn keys() -> Vec<Key> {
    sections().into_iter().flat_map(|s| s.keys).collect()
}

impl Key {
    fn new(path: &'static str, ty: Type, default: Omitted) -> Key {
        Key {
            path,
            ty,
            default,
            bounds: Vec::new(),
            meaning: "",
        }
    }

    fn section(path: &'static str) -> Key {
        Key::new(path, Type::Mapping, Omitted::Section)
    }

    fn int(path: &'static str, default: impl Into<i64>, range: IntRange) -> Key {
        Key::new(path, Type::Integer, value(default.into())).bound(Bound::Int(range))
    }

    /// An integer that `validate` reads as `usize`.
    fn count(path: &'static str, default: usize, range: IntRange) -> Key {
        Key::int(path, default as i64, range)
    }

    fn float(path: &'static str, default: f64, range: FloatRange) -> Key {
        Key::new(path, Type::Number, value(default)).bound(Bound::Float(range))
    }

    fn duration(path: &'static str, default: Duration) -> Key {
        Key::new(
            path,
            Type::Duration,
            Omitted::Value(format_duration(default)),
        )
    }

    fn flag(path: &'static str, default: bool) -> Key {
        Key::new(path, Type::Boolean, value(default))
    }

    fn word<T: Choice>(path: &'static str) -> Key {
        Key::new(
            path,
            Type::Word,
            Omitted::Value(yaml_string(T::default().word())),
        )
        .bound(Bound::Words(T::words()))
    }

    /// A string, or another scalar `ty`, whose default is `null`.
    fn null(path: &'static str, ty: Type) -> Key {
        Key::new(path, ty, Omitted::Value("null".into()))
    }

    fn string(path: &'static str, default: &str) -> Key {
        Key::new(path, Type::String, Omitted::Value(yaml_string(default)))
    }

    fn required(path: &'static str, ty: Type) -> Key {
        Key::new(path, ty, Omitted::Required)
    }

    fn derived(path: &'static str, ty: Type, how: impl Into<String>) -> Key {
        Key::new(path, ty, Omitted::Derived(how.into()))
    }

    fn bound(mut self, bound: Bound) -> Key {
        self.bounds.push(bound);
        self
    }

    fn rule(self, text: impl Into<String>) -> Key {
        self.bound(Bound::Rule(text.into()))
    }

    fn positive(self) -> Key {
        self.bound(Bound::Positive)
    }

    fn means(mut self, meaning: &'static str) -> Key {
        self.meaning = meaning;
        self
    }
}

fn value(v: impl std::fmt::Display) -> Omitted {
    Omitted::Value(v.to_string())
}

/// `text` as a YAML scalar that reads back as this string: quoted when YAML would
/// read it otherwise (a number, a boolean, null, an indicator character).
fn yaml_string(text: &str) -> String {
    let plain = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c.is_ascii_digit())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._:-".contains(c))
        && !text.ends_with(':')
        && text.parse::<f64>().is_err()
        && !["true", "false", "null"].contains(&text.to_ascii_lowercase().as_str());
    if plain {
        text.to_string()
    } else {
        format!("{text:?}")
    }
}

/// `[a, b, c]`, a YAML flow list.
fn yaml_list<T: std::fmt::Display>(items: &[T]) -> Omitted {
    let items: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    Omitted::Value(format!("[{}]", items.join(", ")))
}
