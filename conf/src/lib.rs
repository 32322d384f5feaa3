//! vigil's configuration: YAML in, a validated [`Config`] out.
//!
//! Three layers: [`schema`] (what serde reads, every key optional), [`validate`]
//! (every rule, every error collected with its line and column) and [`types`] (typed
//! values with defaults filled in). `from_str` is apart from `load` so tests parse
//! strings. Defaults are named in `defaults` and bounds in [`bounds`], and the
//! [`reference`] that documents every key is built from those same constants. This
//! crate knows nothing of tokio or pingora.

#![forbid(unsafe_code)]

pub mod bounds;
mod choice;
mod defaults;
mod duration;
mod edge;
mod error;
mod marks;
pub mod reference;
mod schema;
mod types;
mod validate;

pub use duration::{format_duration, parse_duration};
pub use error::{ConfigError, ConfigErrors};
pub use types::*;

use marks::Marks;
use std::path::Path;

/// Reads and validates the file at `path`.
pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single(&name, 1, 1, format!("cannot read file: {e}")))?;
    from_str(&text, &name)
}

/// Parses and validates `text`; `file` names it in error messages.
pub fn from_str(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    if text.trim().is_empty() {
        return Err(ConfigErrors::single(file, 1, 1, "the file is empty"));
    }
    let mut unknown = Vec::new();
    let de = serde_yaml::Deserializer::from_str(text);
    let raw: schema::RawConfig = serde_ignored::deserialize(de, |p| unknown.push(dotted(&p)))
        .map_err(|e| {
            // A type or syntax error leaves the rest of the tree untrustworthy: report
            // it alone, where serde_yaml found it.
            let (line, col) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            ConfigErrors::single(file, line, col, clean_serde_message(&e.to_string()))
        })?;

    let marks = Marks::index(text);
    let mut v = validate::Validator::new(file, &marks);
    for path in unknown {
        let key = path.rsplit('.').next().unwrap_or(&path).to_string();
        v.error_at_key(&path, format!("unknown key `{key}`"));
    }
    let config = v.config(raw);
    v.finish(config)
}

/// `pools.0.backends.1.weight`, matching the paths of [`Marks`].
fn dotted(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => join(dotted(parent), &index.to_string()),
        P::Map { parent, key } => join(dotted(parent), key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            dotted(parent)
        }
    }
}

fn join(parent: String, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// serde_yaml appends " at line L column C" to its messages; we print the position
/// ourselves, in front.
fn clean_serde_message(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}
