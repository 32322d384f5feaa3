//! Issue #29: the config reference cannot drift. Its keys are the schema's keys; each
//! documented default is what leaving the key out gives; each documented bound is
//! where validation starts refusing; `docs/reference.md` and `docs/man/vigil.yaml.5`
//! are what the code generates (`VIGIL_UPDATE_DOCS=1` rewrites them); and every key
//! `docs/migrating.md` names exists, every config it shows validates.

use serde_yaml::{Mapping, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vigil_conf::reference::{self, Bound, Key, Omitted, Type};
use vigil_conf::{format_duration, from_str, Config, Place};

/// A valid file with every optional section present, so that any key can be added to
/// it on its own.
const BASE: &str = "\
listeners:
  - address: 127.0.0.1:8080
    tls:
      certificates:
        - cert: site.pem
          key: site.key
admin:
  address: 127.0.0.1:9901
fleet:
  etcd: [\"http://127.0.0.1:2379\"]
  node: member-1
pools:
  - name: web
    tls: {}
    discovery:
      a: api.internal:8080
    backends:
      - address: 127.0.0.1:18081
";

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// BASE with `value` (YAML) written at `path` (`pools[].health_check.rise`, the first
/// element standing for `[]`).
fn with_key(path: &str, value: &str) -> String {
    let mut doc: Value = serde_yaml::from_str(BASE).unwrap();
    let value: Value = serde_yaml::from_str(value).unwrap();
    let mut at = &mut doc;
    let segments: Vec<&str> = path.split('.').collect();
    for (i, segment) in segments.iter().enumerate() {
        let (name, list) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (*segment, false),
        };
        let map = at.as_mapping_mut().expect("a mapping on the way");
        if i + 1 == segments.len() {
            map.insert(name.into(), value);
            break;
        }
        let empty = if list {
            Value::Sequence(vec![Value::Mapping(Mapping::new())])
        } else {
            Value::Mapping(Mapping::new())
        };
        at = map.entry(name.into()).or_insert(empty);
        if list {
            at = &mut at.as_sequence_mut().expect("a list on the way")[0];
        }
    }
    serde_yaml::to_string(&doc).unwrap()
}

/// Where values were written moves with the lines; nothing else may differ.
fn without_places(mut config: Config) -> Config {
    let nowhere = || Place {
        file: String::new(),
        line: 0,
        col: 0,
    };
    for l in &mut config.listeners {
        for c in l.tls.iter_mut().flat_map(|t| t.certificates.iter_mut()) {
            (c.cert_at, c.key_at) = (nowhere(), nowhere());
        }
    }
    for p in &mut config.pools {
        let p = Arc::make_mut(p);
        if let Some(d) = &mut p.discovery {
            d.at = nowhere();
        }
        if let Some(t) = &mut p.tls {
            t.ca_at = t.ca_at.as_ref().map(|_| nowhere());
        }
    }
    config
}

fn parse(text: &str) -> Result<Config, String> {
    from_str(text, "test.yaml")
        .map(without_places)
        .map_err(|e| e.to_string())
}

#[test]
fn the_reference_lists_exactly_the_keys_the_schema_accepts() {
    let keys = reference::keys();
    let documented: BTreeSet<String> = keys.iter().map(|k| k.path.to_string()).collect();
    assert_eq!(documented.len(), keys.len(), "a key is documented twice");
    let accepted: BTreeSet<String> = vigil_conf::reference::schema_keys().into_iter().collect();
    let missing: Vec<_> = accepted.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "conf/src/reference/ is out of step with conf/src/schema.rs:\n  \
         accepted but not documented: {missing:?}\n  documented but not accepted: {extra:?}"
    );
    for k in &keys {
        assert!(!k.meaning.is_empty(), "{} has no meaning", k.path);
    }
}

#[test]
fn writing_each_documented_default_is_the_same_as_leaving_the_key_out() {
    let base = parse(BASE).expect("BASE is valid");
    let mut checked = 0;
    for k in reference::keys() {
        let Omitted::Value(default) = &k.default else {
            continue;
        };
        let text = with_key(k.path, default);
        let written = parse(&text)
            .unwrap_or_else(|e| panic!("{}: {default} is refused: {e}\n{text}", k.path));
        assert!(
            written == base,
            "{}: the reference says {default}; leaving it out gives something else:\n{}",
            k.path,
            difference(&written, &base)
        );
        checked += 1;
    }
    assert!(checked >= 70, "only {checked} defaults checked");
}

/// The first line where two configurations differ, as `{:#?}` prints them.
fn difference(written: &Config, omitted: &Config) -> String {
    let (a, b) = (format!("{written:#?}"), format!("{omitted:#?}"));
    a.lines()
        .zip(b.lines())
        .find(|(x, y)| x != y)
        .map(|(x, y)| format!("  written: {}\n  omitted: {}", x.trim(), y.trim()))
        .unwrap_or_default()
}

/// Values at a bound's edges, each with whether validation must take it.
fn edges(k: &Key, bound: &Bound) -> Vec<(String, bool)> {
    let ms = Duration::from_millis(1);
    let d = |d: Duration| format_duration(d);
    match bound {
        Bound::Int(r) => {
            let mut e = vec![(r.min.to_string(), true), (r.max.to_string(), true)];
            e.push(((r.min - 1).to_string(), false));
            if r.max < i64::MAX {
                e.push(((r.max + 1).to_string(), false));
            }
            e
        }
        Bound::Float(r) => vec![
            (r.min.to_string(), true),
            ((r.min - 1.0).to_string(), false),
            (r.max.to_string(), r.max_included),
            ((r.max + 1.0).to_string(), false),
        ],
        Bound::Positive => vec![("0s".into(), false), ("1ms".into(), true)],
        Bound::Duration(r) => vec![
            (d(r.min), true),
            (d(r.max), true),
            (d(r.min - ms), false),
            (d(r.max + ms), false),
        ],
        Bound::AtMost(max) => vec![(d(*max), true), (d(*max + ms), false)],
        Bound::AtLeast(min) => vec![(d(*min), true), (d(*min - ms), false)],
        Bound::Words(_) | Bound::Rule(_) => Vec::new(),
    }
    .into_iter()
    .map(|(v, ok)| match k.ty {
        Type::ListOfIntegers | Type::ListOfStrings => (format!("[{v}]"), ok),
        _ => (v, ok),
    })
    .collect()
}

#[test]
fn each_documented_bound_is_where_validation_starts_refusing() {
    let mut checked = 0;
    for k in reference::keys() {
        for bound in &k.bounds {
            for (value, ok) in edges(&k, bound) {
                let result = parse(&with_key(k.path, &value));
                assert!(
                    result.is_ok() == ok,
                    "{}: {value} is documented as {} ({}), validation says {}",
                    k.path,
                    if ok { "allowed" } else { "refused" },
                    bound.describe(),
                    result.err().unwrap_or_else(|| "ok".into())
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 100, "only {checked} edges checked");
}

#[test]
fn each_documented_word_is_known_and_no_other() {
    for k in reference::keys() {
        for bound in &k.bounds {
            let Bound::Words(words) = bound else { continue };
            let refused = parse(&with_key(k.path, "no_such_word")).unwrap_err();
            for w in words {
                assert!(
                    refused.contains(w),
                    "{}: the error for an unknown word does not offer {w}: {refused}",
                    k.path
                );
                // A known word may still break a rule about other keys, a rule that names it.
                if let Err(e) = parse(&with_key(k.path, &format!("{w:?}"))) {
                    assert!(e.contains(w), "{}: {w} is refused: {e}", k.path);
                }
            }
        }
    }
}

#[test]
fn the_documents_example_is_valid() {
    parse(reference::EXAMPLE).expect("the example in the reference validates");
}

/// Compares `path` with `generated`; with VIGIL_UPDATE_DOCS set, rewrites it instead.
fn check_generated(path: &str, generated: &str) {
    let file = repo_file(path);
    if std::env::var_os("VIGIL_UPDATE_DOCS").is_some() {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{path} is not what conf/src/reference.rs generates (first difference at line {}).\n\
             Regenerate it with\n    {}\nand commit the result.",
            line + 1,
            reference::REGENERATE
        );
    }
}

#[test]
fn the_committed_documents_are_what_the_code_generates() {
    check_generated("docs/reference.md", &reference::markdown());
    check_generated("docs/man/vigil.yaml.5", &reference::man_page());
}

/// `KEY` or `KEY: VALUE` in backticks whose first segment is a top-level key: a vigil key.
fn named_keys(markdown: &str, top: &BTreeSet<&str>) -> Vec<(String, Option<String>)> {
    let is_path = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c))
    };
    let mut found = Vec::new();
    let mut in_code_block = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code_block = !in_code_block;
            continue;
        }
        if in_code_block {
            continue;
        }
        for span in line.split('`').skip(1).step_by(2) {
            let (key, value) = match span.split_once(": ") {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (span, None),
            };
            let first = key.split(['.', '[']).next().unwrap_or("");
            if is_path(key) && top.contains(first) {
                found.push((key.to_string(), value));
            }
        }
    }
    found
}

#[test]
fn migrating_md_names_only_keys_and_words_that_exist_and_its_configs_validate() {
    let text = std::fs::read_to_string(repo_file("docs/migrating.md")).expect("docs/migrating.md");
    let keys = reference::keys();
    let top: BTreeSet<&str> = keys
        .iter()
        .map(|k| k.path)
        .filter(|p| !p.contains(['.', '[']))
        .collect();
    let named = named_keys(&text, &top);
    assert!(
        named.len() >= 30,
        "only {} vigil keys found in migrating.md",
        named.len()
    );
    for (path, value) in &named {
        let key = keys.iter().find(|k| k.path == path.as_str());
        let key =
            key.unwrap_or_else(|| panic!("docs/migrating.md names `{path}`, which is not a key"));
        let words = key.bounds.iter().find_map(|b| match b {
            Bound::Words(w) => Some(w),
            _ => None,
        });
        if let (Some(value), Some(words)) = (value, words) {
            assert!(
                words.contains(&value.as_str()),
                "docs/migrating.md: `{path}: {value}`: {value} is not one of {words:?}"
            );
        }
    }
    let blocks: Vec<&str> = text
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(
        blocks.len() >= 2,
        "migrating.md should show its vigil configs as ```yaml blocks"
    );
    for block in blocks {
        parse(block)
            .unwrap_or_else(|e| panic!("a config in docs/migrating.md is invalid: {e}\n{block}"));
    }
}
