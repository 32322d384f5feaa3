//! `docs/reference.md`: one table per section.

use super::{sections, Key, Section, EXAMPLE, REGENERATE};

/// The reference as markdown.
pub fn markdown() -> String {
    let sections = sections();
    let mut out = format!(
        "# vigil.yaml: every key\n\n\
         <!-- Generated from conf/src/reference.rs; do not edit. Regenerate with\n     \
         {REGENERATE} -->\n\n\
         {INTRO}\n\n"
    );
    for s in &sections {
        out += &format!("- [{}](#{})\n", s.title, anchor(s.title));
    }
    out += &format!("\nA small file to start from:\n\n```yaml\n{EXAMPLE}```\n");
    for s in &sections {
        out += &section(s);
    }
    out
}

const INTRO: &str = "\
The configuration file of vigil, key by key. A key is written as its path from the top \
of the file, `[]` standing for each element of a list: `pools[].health_check.interval` \
is `interval` in the `health_check` of each entry of `pools`. Durations are strings \
with a unit (`250ms`, `5s`, `1m`, `1h`); files named by relative paths are relative to \
the config file. An unknown key is an error, and every error is reported at once as \
`FILE:LINE:COL: message`; `vigil validate FILE` checks a file without starting \
anything. *Default* is what leaving a key out means; *bounds* are what validation \
refuses, each error pointing at the value. What the settings do in detail is in \
[contract.md](contract.md); `man vigil.yaml` has this reference too.";

fn section(s: &Section) -> String {
    let mut out = format!("\n## {}\n\n{}\n\n", s.title, s.about);
    out += "| key | type | default | bounds | meaning |\n|---|---|---|---|---|\n";
    for k in &s.keys {
        out += &row(k);
    }
    out
}

fn row(k: &Key) -> String {
    let bounds: Vec<String> = k.bounds.iter().map(|b| b.describe()).collect();
    let cells = [
        format!("`{}`", k.path),
        k.ty.as_str().to_string(),
        k.default.describe(),
        bounds.join("; "),
        k.meaning.to_string(),
    ];
    let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
    format!("| {} |\n", cells.join(" | "))
}

/// The anchor GitHub gives a heading: lower case, punctuation but `-` and `_` dropped,
/// spaces as `-`.
fn anchor(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::anchor;

    #[test]
    fn anchors_are_githubs() {
        assert_eq!(
            anchor("pools[].health_check: timing"),
            "poolshealth_check-timing"
        );
        assert_eq!(anchor("checker and metrics"), "checker-and-metrics");
    }
}
