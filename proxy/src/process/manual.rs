//! `vigil(1)` and the shell completions, rendered from [`super::cli::Cli`], the
//! definition `--help` prints: clap_mangen writes the synopses and the options of the
//! command and of each subcommand, clap_complete the completions. What clap does not
//! know (signals, exit status, files) is written here, once.

use super::cli::Cli;
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;
use std::io::Write;

/// Options every subcommand inherits: listed once, under OPTIONS, not again under each
/// command.
const INHERITED: [&str; 2] = ["log_format", "help"];

/// The two lines roff's every rendering starts with; the page has them once, at the top.
const PREAMBLE: [&str; 2] = [".ie \\n(.g .ds Aq \\(aq", ".el .ds Aq '"];

/// A section clap does not know: its heading and its paragraphs, each a tag (may be
/// empty) and its text.
type Section = (&'static str, &'static [(&'static str, &'static str)]);

const DESCRIPTION: Section = (
    "DESCRIPTION",
    &[(
        "",
        "vigil is an edge reverse proxy on Pingora whose heart is its load-balancer health \
         subsystem: it notices a dead backend quickly, checks backends gently, loses no \
         request while a healthy backend exists, and says what it is doing in its logs, its \
         metrics and its admin API. Its configuration is one YAML file, described in \
         vigil.yaml(5).",
    )],
);

const AFTER: [Section; 5] = [
    (
        "SIGNALS",
        &[
            (
                "SIGHUP",
                "Reload the configuration file. A file with errors changes nothing: each error is \
                 logged and the configuration in force keeps serving.",
            ),
            ("SIGUSR1", "Reopen the access log file (after logrotate has moved it)."),
            (
                "SIGUSR2",
                "Upgrade without refusing a connection: the binary now installed at vigil's path \
                 takes over the listening sockets and every backend's health, as with run \
                 --upgrade, and this process then drains and exits.",
            ),
            (
                "SIGTERM, SIGQUIT",
                "Drain and exit: the listeners close, requests in flight finish (for up to the \
                 configuration's grace_period), and vigil exits 0 as soon as none is left.",
            ),
            ("SIGINT", "Exit at once."),
        ],
    ),
    (
        "EXIT STATUS",
        &[
            ("0", "Success; for run, a drain that ended."),
            (
                "1",
                "An invalid configuration file (every error printed as FILE:LINE:COL: message), an \
                 address that cannot be bound, an admin API that refused or could not be reached.",
            ),
            ("2", "A command line that could not be parsed."),
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            (
                "RUST_LOG",
                "The log filter (for example debug, or vigil_healthcheck=debug); info by default.",
            ),
            ("TMPDIR", "Where the default upgrade_socket is made, one per admin address."),
        ],
    ),
    (
        "FILES",
        &[
            (
                "/etc/vigil/vigil.yaml",
                "The configuration file the packaged systemd unit runs vigil on.",
            ),
            (
                "/lib/systemd/system/vigil.service",
                "The systemd unit: systemctl reload vigil sends SIGHUP, systemctl stop vigil \
                 SIGTERM.",
            ),
            (
                "/var/log/vigil/access.log",
                "The access log, when the configuration's access_log names it; rotated by \
                 /etc/logrotate.d/vigil.",
            ),
            (
                "/usr/share/doc/vigil/contract.md",
                "Every command, configuration key, metric and admin endpoint vigil promises.",
            ),
        ],
    ),
    ("SEE ALSO", &[("", "vigil.yaml(5), systemctl(1), logrotate(8)")]),
];

/// The `vigil(1)` man page, in roff.
pub fn man_page() -> String {
    let mut cmd = Cli::command();
    cmd.build();
    let man = Man::new(cmd.clone())
        .title("VIGIL")
        .source(format!("vigil {}", env!("CARGO_PKG_VERSION")))
        .manual("vigil manual");
    let mut page = PREAMBLE.join("\n") + "\n";
    page += &render(|w| man.render_title(w));
    page += &render(|w| man.render_name_section(w));
    page += &render(|w| man.render_synopsis_section(w));
    for sub in visible_subcommands(&cmd) {
        page += ".br\n";
        page += &headless(render(|w| Man::new(own(sub)).render_synopsis_section(w)));
    }
    page += &section(DESCRIPTION);
    page += &render(|w| man.render_options_section(w));
    page += &commands(&cmd);
    for s in AFTER {
        page += &section(s);
    }
    page += &render(|w| man.render_version_section(w));
    page
}

/// The completion script for `shell`, for the `vigil` command.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vigil", &mut out);
    out
}

/// COMMANDS: each subcommand's synopsis, what it does, and its own options.
fn commands(cmd: &clap::Command) -> String {
    let mut out = String::new();
    for sub in visible_subcommands(cmd) {
        let mut roff = Roff::new();
        roff.control("SS", [sub.get_name()]);
        out += &render(|w| roff.to_writer(w));
        out += &headless(render(|w| Man::new(own(sub)).render_synopsis_section(w)));
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            let mut roff = Roff::new();
            roff.control("PP", []).text([roman(about.to_string())]);
            out += &render(|w| roff.to_writer(w));
        }
        out += &headless(render(|w| Man::new(own(sub)).render_options_section(w)));
    }
    if out.is_empty() {
        return out;
    }
    ".SH COMMANDS\n".to_string() + &out
}

fn visible_subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// `sub` without the options it inherits, for listing what is its own.
fn own(sub: &clap::Command) -> clap::Command {
    let mut own = sub.clone();
    for id in INHERITED {
        if own.get_arguments().any(|a| a.get_id() == id) {
            own = own.mut_arg(id, |a| a.hide(true));
        }
    }
    own
}

fn section((heading, items): Section) -> String {
    let mut roff = Roff::new();
    roff.control("SH", [heading]);
    for (tag, text) in items {
        if tag.is_empty() {
            roff.control("PP", []);
        } else {
            roff.control("TP", []).text([bold(*tag)]);
        }
        roff.text([roman(*text)]);
    }
    render(|w| roff.to_writer(w))
}

/// What `f` writes, without roff's preamble (the page has it once).
fn render(f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> String {
    let mut buf = Vec::new();
    f(&mut buf).expect("writing into memory");
    let text = String::from_utf8(buf).expect("roff from UTF-8 text is UTF-8");
    text.lines()
        .filter(|l| !PREAMBLE.contains(l))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A section clap_mangen rendered, without its `.SH` heading: to place it under ours.
fn headless(section: String) -> String {
    section
        .lines()
        .filter(|l| !l.starts_with(".SH "))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page as a reader sees it: no fonts, plain hyphens.
    fn plain(roff: &str) -> String {
        ["\\fB", "\\fI", "\\fR", "\\fP"]
            .iter()
            .fold(roff.replace("\\-", "-"), |t, font| t.replace(font, ""))
    }

    /// Every `-x` and `--long` in a help text.
    fn options(help: &str) -> Vec<String> {
        help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
            .filter(|w| w.starts_with('-') && w.len() > 1)
            .map(|w| w.split(['=', '<']).next().unwrap_or(w).to_string())
            .collect()
    }

    #[test]
    fn the_man_page_names_every_command_and_option_help_shows() {
        let page = plain(&man_page());
        let mut cmd = Cli::command();
        cmd.build();
        let help = cmd.render_long_help().to_string();
        for opt in options(&help) {
            assert!(
                page.contains(&opt),
                "vigil(1) lacks {opt}, which --help shows"
            );
        }
        for sub in cmd.get_subcommands() {
            let name = format!("vigil {}", sub.get_name());
            assert!(help.contains(sub.get_name()), "--help lacks {name}");
            assert!(page.contains(&name), "vigil(1) lacks {name}");
            let help = sub.clone().render_long_help().to_string();
            for opt in options(&help) {
                assert!(page.contains(&opt), "vigil(1) lacks {opt} of {name}");
            }
            for pos in sub.get_positionals() {
                let value = pos
                    .get_value_names()
                    .map_or(pos.get_id().to_string(), |v| v.join(" "));
                assert!(page.contains(&value), "vigil(1) lacks {value} of {name}");
            }
        }
        for said in [
            "SIGHUP",
            "SIGUSR1",
            "SIGUSR2",
            "SIGTERM",
            "SIGQUIT",
            "SIGINT",
            "/etc/vigil/vigil.yaml",
            "vigil.yaml(5)",
        ] {
            assert!(page.contains(said), "vigil(1) lacks {said}");
        }
    }

    #[test]
    fn the_completions_know_every_command() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completions(shell)).unwrap();
            for sub in Cli::command().get_subcommands() {
                assert!(
                    script.contains(sub.get_name()),
                    "{shell}: {}",
                    sub.get_name()
                );
            }
            assert!(script.contains("log-format"), "{shell}");
        }
    }
}
