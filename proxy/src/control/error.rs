//! Why a configuration was not applied; the one in force keeps serving.

use vigil_conf::ConfigErrors;

#[derive(Debug)]
pub enum ApplyError {
    /// The file has errors; nothing changed.
    Invalid(ConfigErrors),
    /// The file changes settings that only a restart applies; nothing changed.
    NeedsRestart(Vec<String>),
    /// The new access log file cannot be opened; nothing changed.
    AccessLog(String),
    /// Running from the embedded demo config: there is no file to reload.
    NoFile,
    /// The control task has stopped (the process is ending): nothing changed.
    Stopped,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

impl std::error::Error for ApplyError {}

impl ApplyError {
    /// One line per problem, `FILE:LINE:COL: message` where there is a position.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ApplyError::Invalid(errs) => errs.iter().map(|e| e.to_string()).collect(),
            ApplyError::NeedsRestart(what) => what
                .iter()
                .map(|w| format!("{w} changed: restart vigil to apply it; nothing was reloaded"))
                .collect(),
            ApplyError::AccessLog(e) => vec![e.clone()],
            ApplyError::NoFile => {
                vec!["no configuration file to reload (embedded demo config)".into()]
            }
            ApplyError::Stopped => vec!["vigil is stopping: nothing was applied".into()],
        }
    }
}
