//! Issue #29: every configuration in `examples/` passes `vigil validate` (the real
//! binary), without a warning. The examples ship no certificates: the TLS files they
//! name, relative to themselves, are made here with `openssl` beside a copy of each.

use std::path::{Path, PathBuf};
use std::process::Command;
use vigil_tests::certs::TestCa;
use vigil_tests::Vigil;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// The files a config names for TLS: each `cert:` with the `key:` after it, and `ca:`s.
struct TlsFiles {
    pairs: Vec<(String, String)>,
    cas: Vec<String>,
}

fn tls_files(config: &str) -> TlsFiles {
    let mut files = TlsFiles {
        pairs: Vec::new(),
        cas: Vec::new(),
    };
    let mut cert = None;
    for line in config.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let line = line.split(" #").next().unwrap_or("");
        for item in line.split([',', '{', '}']) {
            let item = item.trim().trim_start_matches("- ").trim();
            let Some((key, value)) = item.split_once(':') else {
                continue;
            };
            let value = value.trim().trim_matches('"').to_string();
            match key {
                "cert" => cert = Some(value),
                "key" => files
                    .pairs
                    .push((cert.take().expect("a cert before its key"), value)),
                "ca" => files.cas.push(value),
                _ => {}
            }
        }
    }
    files
}

/// Copies `example` into a directory of its own with the TLS files it names; the copy.
fn prepare(example: &Path, ca: &TestCa) -> PathBuf {
    let text = std::fs::read_to_string(example).unwrap();
    let dir = Vigil::temp_path("example");
    let copy = dir.join(example.file_name().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&copy, &text).unwrap();
    let place = |relative: &str, from: &Path| {
        assert!(
            Path::new(relative).is_relative(),
            "{}: name TLS files relative to the example ({relative}), so that none is shipped",
            example.display()
        );
        let to = dir.join(relative);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    let files = tls_files(&text);
    for (i, (cert, key)) in files.pairs.iter().enumerate() {
        let leaf = ca.leaf(&format!("leaf{i}"), &["example.com", "*.example.com"]);
        place(cert, &leaf.cert);
        place(key, &leaf.key);
    }
    for file in &files.cas {
        place(file, &ca.cert);
    }
    copy
}

#[test]
fn every_example_passes_vigil_validate_without_a_warning() {
    let files = examples();
    assert!(files.len() >= 5, "examples/ has {} configs", files.len());
    let ca = TestCa::new("examples");
    for example in &files {
        let copy = prepare(example, &ca);
        let out = Command::new(Vigil::binary())
            .arg("validate")
            .arg(&copy)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "examples/{}: `vigil validate` exited {:?}\n{stdout}{stderr}",
            example.file_name().unwrap().to_string_lossy(),
            out.status.code()
        );
        assert!(stdout.contains("pool "), "{stdout}");
    }
}

#[test]
fn the_tls_files_of_an_example_are_found() {
    let files = tls_files(
        "certificates:\n  - cert: tls/a.pem   # a\n    key: tls/a.key\n  - {cert: b.pem, key: b.key}\ntls:\n  ca: \"ca.pem\"\n",
    );
    assert_eq!(
        files.pairs,
        [
            ("tls/a.pem".to_string(), "tls/a.key".to_string()),
            ("b.pem".into(), "b.key".into())
        ]
    );
    assert_eq!(files.cas, ["ca.pem"]);
}
