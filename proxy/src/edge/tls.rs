//! TLS at the edge: certificates read from PEM files (at start and on every reload), SNI
//! choosing among them, and the handshake done by vigil itself (in `listener.rs`), so
//! every handshake is counted and a reload changes what new handshakes get without
//! touching open connections.
//!
//! A certificate that cannot be read, a key that does not match its certificate, or an
//! expired certificate is an error at the config line naming the file; the certificates
//! in force keep serving.

use arc_swap::ArcSwap;
use pingora::listeners::tls::Acceptor;
use prometheus::{IntCounter, IntGaugeVec};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::sync::Arc;
use vigil_conf::{CertificateFiles, ConfigError, ConfigErrors, ListenerTls, TlsVersion};

/// The TLS library and crypto provider [`provider`] builds, as `vigil --version` names
/// them. Changing either changes this line (a test holds it to `Cargo.lock`).
pub const PROVIDER_NAME: &str = "rustls 0.23 with ring";

/// The crypto every TLS config of vigil's uses: rustls with ring, built once.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::LazyLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    PROVIDER.clone()
}

/// One certificate, loaded and checked.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// DNS names from the certificate (subjectAltName, else the common name), lower-case;
    /// `*.example.com` for wildcards.
    pub names: Vec<String>,
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
}

impl Loaded {
    /// The name metrics show it under: its first DNS name, or the file's name.
    pub fn label(&self, files: &CertificateFiles) -> String {
        self.names
            .first()
            .cloned()
            .unwrap_or_else(|| files.cert.display().to_string())
    }
}

/// Reads and checks one certificate and its key.
pub fn load(files: &CertificateFiles, now: i64) -> Result<Loaded, ConfigError> {
    let cert_path = files.cert.display();
    let key_path = files.key.display();
    let pem = std::fs::read(&files.cert).map_err(|e| {
        files
            .cert_at
            .error(format!("cannot read certificate {cert_path}: {e}"))
    })?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            files
                .cert_at
                .error(format!("{cert_path}: not a PEM certificate: {e}"))
        })?;
    let Some(leaf) = chain.first() else {
        return Err(files
            .cert_at
            .error(format!("{cert_path}: no certificate in it")));
    };
    let (names, not_after) =
        describe(leaf).map_err(|e| files.cert_at.error(format!("{cert_path}: {e}")))?;
    if not_after < now {
        return Err(files.cert_at.error(format!(
            "certificate {cert_path} expired at {} (Unix time)",
            not_after
        )));
    }
    let pem = std::fs::read(&files.key).map_err(|e| {
        files
            .key_at
            .error(format!("cannot read key {key_path}: {e}"))
    })?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| {
            files
                .key_at
                .error(format!("{key_path}: not a PEM key: {e}"))
        })?
        .ok_or_else(|| {
            files
                .key_at
                .error(format!("{key_path}: no private key in it"))
        })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| files.key_at.error(format!("{key_path}: unusable key: {e}")))?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match().map_err(|_| {
        files.key_at.error(format!(
            "{key_path} is not the key of certificate {cert_path}"
        ))
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        names,
        not_after,
    })
}

/// The leaf's DNS names and expiry.
fn describe(der: &[u8]) -> Result<(Vec<String>, i64), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("bad certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert.subject().iter_common_name().next() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// Certificates (or anything) by name, for SNI.
#[derive(Debug)]
struct Table<T> {
    exact: HashMap<String, T>,
    /// `example.com` for a `*.example.com` certificate.
    wildcard: HashMap<String, T>,
    default: Option<T>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
        }
    }
}

impl<T: Clone> Table<T> {
    /// `entries` in config order: (names, value).
    fn build<'a>(entries: impl IntoIterator<Item = (&'a [String], T)>) -> Table<T> {
        let mut t = Table::default();
        for (names, value) in entries {
            if t.default.is_none() {
                t.default = Some(value.clone());
            }
            for name in names {
                // The first certificate naming a host wins, as one reads the file.
                match name.strip_prefix("*.") {
                    Some(parent) => t.wildcard.entry(parent.to_string()),
                    None => t.exact.entry(name.clone()),
                }
                .or_insert_with(|| value.clone());
            }
        }
        t
    }

    fn pick(&self, sni: Option<&str>) -> Option<&T> {
        let Some(name) = sni else {
            return self.default.as_ref();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.exact
            .get(&name)
            .or_else(|| {
                name.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent))
            })
            .or(self.default.as_ref())
    }
}

/// Chooses the certificate by SNI from the table in force.
#[derive(Debug, Default)]
struct SniResolver(ArcSwap<Table<Arc<CertifiedKey>>>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().pick(hello.server_name()).cloned()
    }
}

/// One TLS listener: its acceptor (rebuilt on reload) and its counters.
pub struct ListenerTlsState {
    listener: String,
    http2: bool,
    resolver: Arc<SniResolver>,
    acceptor: ArcSwap<Acceptor>,
    /// `vigil_tls_handshakes_total{listener, result}` for success, failure, timeout.
    pub handshakes: [IntCounter; 3],
    expiry: IntGaugeVec,
    /// The expiry series set now, to remove when a reload drops a certificate.
    expiry_names: std::sync::Mutex<Vec<String>>,
    /// The chains in force, to tell whether a reload changed anything.
    chains: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl ListenerTlsState {
    pub fn new(
        listener: String,
        http2: bool,
        handshakes: [IntCounter; 3],
        expiry: IntGaugeVec,
    ) -> Self {
        let resolver = Arc::new(SniResolver::default());
        let acceptor = build_acceptor(&resolver, TlsVersion::V1_2, http2);
        ListenerTlsState {
            listener,
            http2,
            resolver,
            acceptor: ArcSwap::from_pointee(acceptor),
            handshakes,
            expiry,
            expiry_names: Default::default(),
            chains: Default::default(),
        }
    }

    /// Reads every certificate of `config`; nothing changes unless all of them load.
    pub fn prepare(config: &ListenerTls) -> Result<Vec<Loaded>, ConfigErrors> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut loaded = Vec::new();
        let mut errors = Vec::new();
        for files in &config.certificates {
            match load(files, now) {
                Ok(l) => loaded.push(l),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(loaded)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// New handshakes use `loaded` from now on; open connections keep theirs. True if
    /// the certificates differ from those in force.
    pub fn install(&self, config: &ListenerTls, loaded: Vec<Loaded>) -> bool {
        let chains: Vec<Vec<u8>> = loaded
            .iter()
            .map(|l| {
                l.key
                    .cert
                    .iter()
                    .flat_map(|c| c.as_ref().to_vec())
                    .collect()
            })
            .collect();
        let changed = {
            let mut held = self.chains.lock().unwrap();
            let changed = *held != chains;
            *held = chains;
            changed
        };
        let mut names = self.expiry_names.lock().unwrap();
        for n in names.drain(..) {
            let _ = self.expiry.remove_label_values(&[&self.listener, &n]);
        }
        for (files, l) in config.certificates.iter().zip(&loaded) {
            let name = l.label(files);
            self.expiry
                .with_label_values(&[&self.listener, &name])
                .set(l.not_after);
            names.push(name);
        }
        let table = Table::build(loaded.iter().map(|l| (l.names.as_slice(), l.key.clone())));
        self.resolver.0.store(Arc::new(table));
        self.acceptor.store(Arc::new(build_acceptor(
            &self.resolver,
            config.min_version,
            self.http2,
        )));
        changed
    }

    pub fn acceptor(&self) -> Arc<Acceptor> {
        self.acceptor.load_full()
    }
}

fn build_acceptor(resolver: &Arc<SniResolver>, min: TlsVersion, http2: bool) -> Acceptor {
    let versions: &[&rustls::SupportedProtocolVersion] = match min {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    // rustls offers only AEAD suites with forward secrecy: that is the cipher policy.
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Acceptor::from_server_config(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_name_matches_the_locked_rustls() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
            .expect("the workspace's Cargo.lock");
        let versions: Vec<&str> = lock
            .split("[[package]]")
            .filter(|p| p.contains("\nname = \"rustls\"\n"))
            .filter_map(|p| p.split("\nversion = \"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(versions.len(), 1, "one rustls in Cargo.lock: {versions:?}");
        let minor: Vec<&str> = versions[0].split('.').take(2).collect();
        let want = format!("rustls {} with ring", minor.join("."));
        assert_eq!(PROVIDER_NAME, want);
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (a, b, c) = (
            names(&["site.test"]),
            names(&["*.api.test", "api.test"]),
            names(&["x.api.test"]),
        );
        let t = Table::build([
            (a.as_slice(), 'a'),
            (b.as_slice(), 'b'),
            (c.as_slice(), 'c'),
        ]);
        assert_eq!(t.pick(Some("site.test")), Some(&'a'));
        assert_eq!(
            t.pick(Some("API.test.")),
            Some(&'b'),
            "case and trailing dot"
        );
        assert_eq!(t.pick(Some("v1.api.test")), Some(&'b'), "wildcard");
        assert_eq!(
            t.pick(Some("x.api.test")),
            Some(&'c'),
            "exact beats wildcard"
        );
        assert_eq!(
            t.pick(Some("a.b.api.test")),
            Some(&'a'),
            "a wildcard covers one label"
        );
        assert_eq!(t.pick(Some("other.test")), Some(&'a'), "default: the first");
        assert_eq!(t.pick(None), Some(&'a'), "no SNI: the default");
    }
}
