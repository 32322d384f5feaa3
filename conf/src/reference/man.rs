//! `docs/man/vigil.yaml.5`: the reference as a man page (section 5, `man` macros),
//! written to pass `groff -man -ww` and `mandoc -Tlint` without a warning.

use super::{sections, Key, Omitted, Section, EXAMPLE, REGENERATE};

/// The reference as roff.
pub fn man_page() -> String {
    let mut out = format!(
        ".\\\" Generated from vigil's conf/src/reference.rs; do not edit. Regenerate with\n\
         .\\\" {REGENERATE}\n\
         .TH VIGIL.YAML 5 {PAGE_DATE} vigil \"File Formats Manual\"\n\
         .SH NAME\n\
         vigil.yaml \\- configuration file of the vigil reverse proxy\n\
         .SH SYNOPSIS\n\
         .B /etc/vigil/vigil.yaml\n\
         .SH DESCRIPTION\n"
    );
    out += &DESCRIPTION.map(text).join("\n.PP\n");
    out += "\n";
    out += ".SH KEYS\n";
    for s in sections() {
        out += &section(&s);
    }
    out += ".SH EXAMPLES\nA small file to start from:\n.PP\n.RS 4\n.nf\n";
    for line in EXAMPLE.lines() {
        out += &format!("{}\n", literal(line));
    }
    out += ".fi\n.RE\n";
    out += &format!(".SH FILES\n{}\n", text(FILES));
    out += &format!(".SH SEE ALSO\n.BR vigil (1)\n.PP\n{}\n", text(SEE_ALSO));
    out
}

/// When what the page says last changed (the date `man` prints at its foot): move it
/// when the keys or their defaults change.
const PAGE_DATE: &str = "2026-12-06";

const DESCRIPTION: [&str; 4] = [
    "`vigil` reads its configuration from one YAML file, named by `vigil run -c FILE`. \
     This page lists every key it accepts, with its type, its default (what leaving the \
     key out means) and its bounds (what validation refuses).",
    "A key is written as its path from the top of the file, `[]` standing for each \
     element of a list: `pools[].health_check.interval` is `interval` in the \
     `health_check` of each entry of `pools`.",
    "Durations are strings with a unit: `250ms`, `5s`, `1m`, `1h`. Files named by \
     relative paths are relative to the configuration file. An unknown key is an error. \
     Every error is reported at once, as `FILE:LINE:COL: message`; `vigil validate FILE` \
     checks a file (and the certificate files it names) without starting anything.",
    "`SIGHUP`, `POST /admin/reload` or `vigil run --watch` reload the file. A reload that \
     changes a key marked \"restart to change\" is refused whole, and the running \
     configuration keeps serving.",
];

const FILES: &str = "`/etc/vigil/vigil.yaml`: the configuration the packaged service runs.";

const SEE_ALSO: &str = "`/usr/share/doc/vigil/`: the reference in markdown (`reference.md`), \
                        the contract vigil keeps with its operators (`contract.md`), \
                        commented example configurations (`examples/`) and a guide for \
                        those coming from HAProxy or nginx (`migrating.md`).";

fn section(s: &Section) -> String {
    let mut out = format!(".SS {}\n{}\n", text(s.title), text(s.about));
    for k in &s.keys {
        out += &key(k);
    }
    out
}

fn key(k: &Key) -> String {
    let mut facts = vec![format!("Type: {}", k.ty.as_str())];
    match &k.default {
        Omitted::Section => {}
        Omitted::Required => facts.push("Required".into()),
        other => facts.push(format!("Default: {}", other.describe())),
    }
    let bounds: Vec<String> = k.bounds.iter().map(|b| b.describe()).collect();
    if !bounds.is_empty() {
        facts.push(format!("Bounds: {}", bounds.join("; ")));
    }
    format!(
        ".TP\n.B {}\n{}\n.br\n{}\n",
        literal(k.path),
        text(&format!("{}.", facts.join(". "))),
        text(&sentence(k.meaning))
    )
}

/// A fragment as a sentence: a capital first letter, a full stop at the end.
fn sentence(fragment: &str) -> String {
    let mut chars = fragment.chars();
    let mut out: String = match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

/// Markdown-ish text as roff: `code` in bold, never hyphenated nor broken, the rest
/// escaped; filled into lines of at most 80 bytes, each sentence on a line of its own.
fn text(markdown: &str) -> String {
    let mut roff = String::new();
    for (i, part) in markdown.split('`').enumerate() {
        if i % 2 == 1 {
            roff += &format!("\\fB\\%{}\\fR", escape(part).replace(' ', NO_BREAK));
        } else {
            roff += &escape(part);
        }
    }
    fill(&roff).replace(NO_BREAK, "\\ ")
}

/// Stands for roff's unbreakable space `\ ` while lines are filled at spaces.
const NO_BREAK: &str = "\u{0}";

/// Words on lines of at most 80 bytes (unless one word is longer), a line ending at
/// each sentence's end, as roff sources are written.
fn fill(roff: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in roff.split(' ').filter(|w| !w.is_empty()) {
        // Each NO_BREAK will take two bytes.
        let width = |s: &str| s.len() + s.matches(NO_BREAK).count();
        if !line.is_empty() && width(&line) + 1 + width(word) > 80 {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line += word;
        if word.ends_with(['.', '?', '!']) || word.ends_with(".\\fR") {
            lines.push(std::mem::take(&mut line));
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    let lines: Vec<String> = lines.into_iter().map(start_safely).collect();
    lines.join("\n")
}

/// Text printed as it is (an example's line).
fn literal(line: &str) -> String {
    start_safely(escape(line))
}

/// A line starting with `.` or `'` would be read as a request.
fn start_safely(line: String) -> String {
    if line.starts_with(['.', '\'']) {
        format!("\\&{line}")
    } else {
        line
    }
}

/// Escapes what roff would read otherwise: the backslash, `-` (a hyphen, not the
/// minus sign a reader copies), and anything outside ASCII.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            c if c.is_ascii() => out.push(c),
            c => out.push_str(&format!("\\[u{:04X}]", c as u32)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_roff_would_read() {
        assert_eq!(text("`a-b c`: d\\e"), "\\fB\\%a\\-b\\ c\\fR: d\\ee");
        assert_eq!(text("one. ...two"), "one.\n\\&...two");
        assert_eq!(escape("5%\u{2026}"), "5%\\[u2026]");
        assert_eq!(sentence("stuck requests"), "Stuck requests.");
    }
}
