//! `vigil-docs DIR`: writes `vigil(1)` and the bash, zsh and fish completions, rendered
//! from the command line `vigil --help` prints, into DIR (`scripts/deb.sh` packages
//! them). Not installed: the `vigil` binary carries no generator.

#![forbid(unsafe_code)]

use clap_complete::Shell;
use std::path::PathBuf;
use std::process::ExitCode;
use vigil_proxy::process::manual;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: vigil-docs DIR (writes vigil.1, vigil.bash, _vigil, vigil.fish)");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    let files = [
        ("vigil.1", manual::man_page().into_bytes()),
        ("vigil.bash", manual::completions(Shell::Bash)),
        ("_vigil", manual::completions(Shell::Zsh)),
        ("vigil.fish", manual::completions(Shell::Fish)),
    ];
    for (name, content) in files {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, content) {
            eprintln!("vigil-docs: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
