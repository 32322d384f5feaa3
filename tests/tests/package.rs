//! The Debian package (`scripts/deb.sh`, issue #29): built from this tree's release
//! binaries, its metadata and files checked, lintian run on it, and the packaged binary
//! run on the packaged config. Skipped, with a line saying so, where dpkg-deb is missing
//! (`make test-deps` installs it and lintian).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use vigil_tests::Vigil;

/// Every file the package must install (beside `/usr/bin/vigil`).
const FILES: [&str; 19] = [
    "usr/bin/vigil",
    "lib/systemd/system/vigil.service",
    "etc/vigil/vigil.yaml",
    "etc/logrotate.d/vigil",
    "usr/share/man/man1/vigil.1.gz",
    "usr/share/man/man5/vigil.yaml.5.gz",
    "usr/share/bash-completion/completions/vigil",
    "usr/share/zsh/vendor-completions/_vigil",
    "usr/share/fish/vendor_completions.d/vigil.fish",
    "usr/share/doc/vigil/copyright",
    "usr/share/doc/vigil/changelog.Debian.gz",
    "usr/share/doc/vigil/README.md.gz",
    "usr/share/doc/vigil/contract.md",
    "usr/share/doc/vigil/reference.md.gz",
    "usr/share/doc/vigil/migrating.md.gz",
    "usr/share/doc/vigil/examples/tls-edge.yaml",
    "usr/share/doc/vigil/examples/consul-dns.yaml",
    "usr/share/doc/vigil/examples/fleet-etcd.yaml",
    "usr/share/doc/vigil/examples/blue-green.yaml",
];

#[test]
fn the_debian_package_has_every_file_passes_lintian_and_runs() {
    if find_tool("dpkg-deb").is_none() {
        eprintln!("skipped: dpkg-deb is missing (make test-deps installs it)");
        return;
    }
    let dir = Vigil::temp_path("deb");
    let (deb, dbgsym) = build(&dir);
    let root = dir.join("root");
    run(
        "dpkg-deb",
        &["-x".as_ref(), deb.as_os_str(), root.as_os_str()],
    );
    check_metadata(&deb);
    check_contents(&deb, &dbgsym, &root);
    lint(&[&deb, &dbgsym]);
    run_packaged(&root);
    check_logrotate(&dir, &root);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `scripts/deb.sh` on the binaries this test run uses; the two packages.
fn build(dir: &Path) -> (PathBuf, PathBuf) {
    let vigil = Vigil::binary();
    let docs = vigil.with_file_name("vigil-docs");
    assert!(
        docs.exists(),
        "{} is missing: cargo build --release --bins",
        docs.display()
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(repo.join("scripts/deb.sh"))
        .arg(dir)
        .env("VIGIL_BIN", &vigil)
        .env("VIGIL_DOCS_BIN", &docs)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/deb.sh failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let debs: Vec<PathBuf> = stdout.lines().map(PathBuf::from).collect();
    let version = env!("CARGO_PKG_VERSION");
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().to_string();
    assert_eq!(debs.len(), 2, "{stdout}");
    assert!(
        name(&debs[0]).starts_with(&format!("vigil_{version}-")),
        "{stdout}"
    );
    assert!(name(&debs[0]).ends_with("_amd64.deb"), "{stdout}");
    assert!(
        name(&debs[1]).starts_with(&format!("vigil-dbgsym_{version}-")),
        "{stdout}"
    );
    (debs[0].clone(), debs[1].clone())
}

fn check_metadata(deb: &Path) {
    let info = text(run("dpkg-deb", &["--info".as_ref(), deb.as_os_str()]));
    for field in [
        "Package: vigil\n",
        "Architecture: amd64\n",
        "Section: httpd\n",
        "Maintainer: ",
        "Description: ",
    ] {
        assert!(
            info.contains(field),
            "dpkg-deb --info lacks {field:?}:\n{info}"
        );
    }
    let field = |name: &str| {
        let line = info.lines().find(|l| l.trim_start().starts_with(name));
        line.unwrap_or_else(|| panic!("no {name} in\n{info}"))
            .trim_start()[name.len()..]
            .trim()
            .to_string()
    };
    let size: u64 = field("Installed-Size:").parse().unwrap();
    assert!(size > 1000, "Installed-Size: {size} KiB");
    let depends = field("Depends:");
    assert!(depends.contains("libc6 (>= "), "Depends: {depends}");
    let control = |file: &str| {
        text(run(
            "dpkg-deb",
            &["--info".as_ref(), deb.as_os_str(), file.as_ref()],
        ))
    };
    let conffiles = control("conffiles");
    assert!(
        conffiles.lines().any(|l| l == "/etc/vigil/vigil.yaml"),
        "{conffiles}"
    );
    assert!(
        conffiles.lines().any(|l| l == "/etc/logrotate.d/vigil"),
        "{conffiles}"
    );
    assert!(control("md5sums").contains("  usr/bin/vigil\n"));
    let postinst = control("postinst");
    for snippet in [
        "deb-systemd-helper enable 'vigil.service'",
        "deb-systemd-invoke $_dh_action 'vigil.service'",
    ] {
        assert!(
            postinst.contains(snippet),
            "postinst lacks {snippet}:\n{postinst}"
        );
    }
    assert!(control("prerm").contains("deb-systemd-invoke stop 'vigil.service'"));
    assert!(control("postrm").contains("deb-systemd-helper purge 'vigil.service'"));
}

/// Every file present and as it should be; the binary stripped, its symbols in vigil-dbgsym
/// under its build id; every file matching md5sums.
fn check_contents(deb: &Path, dbgsym: &Path, root: &Path) {
    let contents = text(run("dpkg-deb", &["--contents".as_ref(), deb.as_os_str()]));
    for file in FILES {
        assert!(
            contents.contains(&format!(" ./{file}\n")),
            "the package lacks /{file}:\n{contents}"
        );
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let example = std::env::var_os("VIGIL_EXAMPLE_CONFIG")
        .map_or_else(|| repo.join("examples/vigil.yaml"), PathBuf::from);
    for (installed, source) in [
        ("etc/vigil/vigil.yaml", example),
        (
            "lib/systemd/system/vigil.service",
            repo.join("docs/vigil.service"),
        ),
    ] {
        let same = std::fs::read(root.join(installed)).unwrap() == std::fs::read(&source).unwrap();
        assert!(same, "/{installed} is not {} as it is", source.display());
    }
    let bin = root.join("usr/bin/vigil");
    let sections = text(run(
        "readelf",
        &["-S".as_ref(), "-W".as_ref(), bin.as_os_str()],
    ));
    assert!(
        !sections.contains(" .symtab "),
        "/usr/bin/vigil is not stripped"
    );
    assert!(
        !sections.contains(" .debug_info "),
        "/usr/bin/vigil has debug information"
    );
    assert!(
        sections.contains(" .gnu_debuglink "),
        "/usr/bin/vigil names no debug file"
    );
    let notes = text(run("readelf", &["-n".as_ref(), bin.as_os_str()]));
    let id = notes
        .split("Build ID: ")
        .nth(1)
        .expect("a build id")
        .split_whitespace()
        .next()
        .unwrap();
    let symbols = text(run(
        "dpkg-deb",
        &["--contents".as_ref(), dbgsym.as_os_str()],
    ));
    let debug = format!(
        " ./usr/lib/debug/.build-id/{}/{}.debug\n",
        &id[..2],
        &id[2..]
    );
    assert!(
        symbols.contains(&debug),
        "vigil-dbgsym lacks{debug}{symbols}"
    );
    let control = root.join("DEBIAN");
    run(
        "dpkg-deb",
        &["-e".as_ref(), deb.as_os_str(), control.as_os_str()],
    );
    let check = Command::new("md5sum")
        .args(["--quiet", "-c", "DEBIAN/md5sums"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(check.status.success(), "md5sums: {}", text(check));
}

/// lintian, where installed: no `E:` line (warnings are printed).
fn lint(debs: &[&Path]) {
    if find_tool("lintian").is_none() {
        eprintln!("lintian skipped: not installed (make test-deps installs it)");
        return;
    }
    let out = Command::new("lintian").args(debs).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("lintian:\n{report}");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "lintian failed: {}",
        text(out.clone())
    );
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
}

/// The packaged binary names its commit and TLS provider and accepts the packaged config.
fn run_packaged(root: &Path) {
    let bin = root.join("usr/bin/vigil");
    let version = text(run(&bin, &["--version".as_ref()]));
    assert!(
        version.starts_with(&format!("vigil {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(version.contains(", TLS rustls "), "{version}");
    let config = root.join("etc/vigil/vigil.yaml");
    let out = Command::new(&bin)
        .arg("validate")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vigil validate /etc/vigil/vigil.yaml: {}",
        text(out)
    );
}

/// logrotate, where installed, accepts the package's file, and it rotates every log under
/// /var/log the packaged config names.
fn check_logrotate(dir: &Path, root: &Path) {
    let rotate = root.join("etc/logrotate.d/vigil");
    let config = std::fs::read_to_string(root.join("etc/vigil/vigil.yaml")).unwrap();
    for path in config
        .split_whitespace()
        .filter(|w| w.starts_with("/var/log/"))
    {
        let path = path.trim_matches(|c| c == '"' || c == '\'' || c == ',' || c == '}');
        assert!(
            path.starts_with("/var/log/vigil/") && path.ends_with(".log"),
            "/etc/logrotate.d/vigil (/var/log/vigil/*.log) does not rotate {path}"
        );
    }
    let Some(logrotate) = find_tool("logrotate") else {
        eprintln!("logrotate -d skipped: not installed (make test-deps installs it)");
        return;
    };
    let state = dir.join("logrotate.state");
    let out = Command::new(logrotate)
        .arg("-d")
        .arg("-s")
        .arg(&state)
        .arg(&rotate)
        .output()
        .unwrap();
    let said = text(out.clone());
    assert!(
        out.status.success() && !said.contains("error"),
        "logrotate -d: {said}"
    );
}

/// `tool` on PATH, or in /usr/sbin or /sbin (logrotate, for a user without them on PATH).
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&std::ffi::OsStr]) -> Output {
    let name = program.as_ref().to_string_lossy().to_string();
    let out = Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        text(out.clone())
    );
    out
}

/// stdout, then stderr, as text.
fn text(out: Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}
