//! The TLS files a configuration names (listener certificates and keys, pools' CA
//! files): read and checked before anything changes, for start, reload and
//! `vigil validate`.

use crate::dataplane::upstream_tls::PoolTls;
use crate::edge::tls::{ListenerTlsState, Loaded};
use std::collections::HashMap;
use std::sync::Arc;
use vigil_conf::ConfigErrors;

/// What TLS needs from the files a config names, all read and checked.
pub struct Prepared {
    /// Each TLS listener's certificates, by address.
    pub listeners: Vec<(std::net::SocketAddr, Vec<Loaded>)>,
    /// Each HTTPS pool's settings, by pool name.
    pub pools: HashMap<String, Arc<PoolTls>>,
}

/// Reads every file `config` names for TLS (listener certificates and keys, pools' CA
/// files); every error at once, in file order. Start and reload use what it read;
/// `vigil validate` reports what they would refuse.
pub fn prepare(config: &vigil_conf::Config) -> Result<Prepared, ConfigErrors> {
    let mut errors = Vec::new();
    let mut listeners = Vec::new();
    for l in &config.listeners {
        if let Some(tls) = &l.tls {
            match ListenerTlsState::prepare(tls) {
                Ok(loaded) => listeners.push((l.address, loaded)),
                Err(e) => errors.extend(e.0),
            }
        }
    }
    let pools = crate::dataplane::upstream_tls::prepare(config).unwrap_or_else(|e| {
        errors.extend(e.0);
        HashMap::new()
    });
    if errors.is_empty() {
        Ok(Prepared { listeners, pools })
    } else {
        errors.sort_by_key(|e| (e.line, e.col));
        Err(ConfigErrors(errors))
    }
}

/// [`prepare`] for `vigil validate`: only whether the files are good.
pub fn check_files(config: &vigil_conf::Config) -> Result<(), ConfigErrors> {
    prepare(config).map(|_| ())
}

/// Every file TLS reads: listener certificates and keys, pools' CA files.
pub fn files(config: &vigil_conf::Config) -> Vec<std::path::PathBuf> {
    let listeners = config.listeners.iter().filter_map(|l| l.tls.as_ref());
    let certs = listeners.flat_map(|t| {
        t.certificates
            .iter()
            .flat_map(|c| [c.cert.clone(), c.key.clone()])
    });
    let cas = config
        .pools
        .iter()
        .filter_map(|p| p.tls.as_ref()?.ca.clone());
    certs.chain(cas).collect()
}

/// Settings that are allowed but deserve a second look.
pub fn warnings(config: &vigil_conf::Config) -> Vec<String> {
    config
        .pools
        .iter()
        .filter(|p| p.tls.as_ref().is_some_and(|t| !t.verify))
        .map(|p| {
            format!(
                "pool {}: tls.verify is false: its backends' certificates are not checked",
                p.name
            )
        })
        .collect()
}
