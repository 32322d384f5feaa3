//! HTTPS to a pool's backends: the CA file read once per apply (errors at its config
//! line), what the request path gives Pingora's connector, and the client config the
//! pool's HTTPS health checks use.

use pingora::protocols::tls::CaType;
use pingora::utils::tls::{parse_x509, WrappedX509};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::collections::HashMap;
use std::sync::Arc;
use vigil_conf::{Config, ConfigError, ConfigErrors, PoolConfig};
use vigil_healthcheck::TlsClient;

/// A pool's HTTPS settings, ready for the request path and the checker.
pub struct PoolTls {
    pub sni: Option<String>,
    pub verify: bool,
    /// The CA file's certificates for Pingora's connector; None: its default roots.
    pub ca: Option<Arc<CaType>>,
    /// The client config HTTPS checks use (same roots and verification).
    checks: Arc<rustls::ClientConfig>,
    /// SNI, verify and the CA file's bytes: unchanged means the same settings.
    id: String,
    /// A hasher that has hashed `id`, for `connection_key` (every request's).
    id_hashed: std::collections::hash_map::DefaultHasher,
}

impl PoolTls {
    /// The name sent in SNI and verified for `address` (`host:port` as configured).
    pub fn server_name(&self, address: &str) -> String {
        self.sni
            .clone()
            .unwrap_or_else(|| crate::dataplane::path::host_of(address).to_string())
    }

    /// Tells idle connections to `address` apart by their TLS settings and name: one
    /// is reused only for requests that would have made the same handshake.
    pub fn connection_key(&self, address: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = self.id_hashed.clone();
        let name = match &self.sni {
            Some(sni) => sni.as_str(),
            None => crate::dataplane::path::host_of(address),
        };
        name.hash(&mut h);
        h.finish() | 1
    }

    /// The checker's TLS settings for one backend.
    pub fn check_client(&self, address: &str) -> Option<TlsClient> {
        let name = self.server_name(address);
        let server_name = ServerName::try_from(name.clone()).ok()?;
        Some(TlsClient {
            config: self.checks.clone(),
            server_name,
            id: format!("{}|{name}", self.id),
        })
    }
}

/// Every pool's HTTPS settings, by pool name; all CA files must load.
pub fn prepare(config: &Config) -> Result<HashMap<String, Arc<PoolTls>>, ConfigErrors> {
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    // The system's roots, read once for every pool that uses them.
    let mut native = None;
    for pool in &config.pools {
        match prepare_pool(pool, &mut native) {
            Ok(Some(t)) => {
                out.insert(pool.name.clone(), Arc::new(t));
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn prepare_pool(
    pool: &PoolConfig,
    native: &mut Option<RootCertStore>,
) -> Result<Option<PoolTls>, ConfigError> {
    let Some(tls) = &pool.tls else {
        return Ok(None);
    };
    let mut id = format!("{:?}|{}", tls.sni, tls.verify);
    let mut roots = RootCertStore::empty();
    let ca = match (&tls.ca, &tls.ca_at) {
        (Some(path), Some(at)) => {
            let shown = path.display();
            let pem = std::fs::read(path)
                .map_err(|e| at.error(format!("cannot read CA file {shown}: {e}")))?;
            id.push_str(&format!("{:x}", fingerprint(&pem)));
            let ders: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|e| at.error(format!("{shown}: not PEM certificates: {e}")))?;
            if ders.is_empty() {
                return Err(at.error(format!("{shown}: no certificate in it")));
            }
            let mut wrapped = Vec::new();
            for der in ders {
                x509_parser::parse_x509_certificate(&der)
                    .map_err(|e| at.error(format!("{shown}: bad certificate: {e}")))?;
                roots
                    .add(der.clone())
                    .map_err(|e| at.error(format!("{shown}: unusable CA certificate: {e}")))?;
                wrapped.push(WrappedX509::new(der.to_vec(), parse_x509));
            }
            Some(Arc::<CaType>::from(wrapped))
        }
        _ => {
            // The system's roots, as Pingora's connector uses when no CA is given:
            // read and parsed once for every pool that uses them.
            roots = native
                .get_or_insert_with(|| {
                    let mut system = RootCertStore::empty();
                    for cert in rustls_native_certs::load_native_certs().unwrap_or_default() {
                        let _ = system.add(cert);
                    }
                    system
                })
                .clone();
            None
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(crate::edge::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions");
    let checks = if tls.verify {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify))
            .with_no_client_auth()
    };
    let mut checks = checks;
    // gRPC checks speak HTTP/2, HTTP checks HTTP/1.1: ALPN says which.
    checks.alpn_protocols = match pool.health_check.kind {
        vigil_conf::CheckKind::Grpc => vec![b"h2".to_vec()],
        _ => vec![b"http/1.1".to_vec()],
    };
    let mut id_hashed = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&id, &mut id_hashed);
    Ok(Some(PoolTls {
        sni: tls.sni.clone(),
        verify: tls.verify,
        ca,
        checks: Arc::new(checks),
        id,
        id_hashed,
    }))
}

/// FNV-1a: tells a changed CA file from the same one; not a security property.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// `verify: false`: accepts any certificate (written explicitly; `validate` warns).
/// Signatures are still checked. (Also the bench's clients' verifier, `h2idle`.)
#[derive(Debug)]
pub struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &crate::edge::tls::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crate::edge::tls::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::edge::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use crate::dataplane::path::host_of;

    #[test]
    fn hosts() {
        assert_eq!(host_of("api.internal:443"), "api.internal");
        assert_eq!(host_of("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("plain"), "plain");
    }

    /// The key telling idle connections apart is the hash of the pool's TLS settings
    /// and the name its handshake sends: one per name, the same for every request.
    #[test]
    fn connection_keys_are_the_settings_and_the_name_hashed() {
        use std::hash::{Hash, Hasher};
        let yaml = "listeners: [{address: '127.0.0.1:1'}]\npools:\n  - name: a\n    routes: [{host: a.test}]\n    tls: {verify: false}\n    backends: [{address: '127.0.0.1:443'}]\n  - name: s\n    routes: [{host: s.test}]\n    tls: {verify: false, sni: api.test}\n    backends: [{address: '127.0.0.1:443'}]\n";
        let config = vigil_conf::from_str(yaml, "keys.yaml").unwrap();
        let pools = super::prepare(&config).unwrap();
        let key = |pool: &str, address: &str| pools[pool].connection_key(address);
        let expected = |pool: &str, address: &str| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            pools[pool].id.hash(&mut h);
            pools[pool].server_name(address).hash(&mut h);
            h.finish() | 1
        };
        for (pool, address) in [
            ("a", "b.test:443"),
            ("a", "c.test:443"),
            ("s", "b.test:443"),
        ] {
            assert_eq!(
                key(pool, address),
                expected(pool, address),
                "{pool} {address}"
            );
            assert_eq!(key(pool, address), key(pool, address));
        }
        assert_ne!(
            key("a", "127.0.0.1:443"),
            key("a", "127.0.0.2:443"),
            "by name"
        );
        // With SNI set, the name is the same whichever backend.
        assert_eq!(key("s", "127.0.0.1:443"), key("s", "127.0.0.2:443"));
        assert_ne!(
            key("a", "b.test:443"),
            key("s", "b.test:443"),
            "by settings"
        );
    }
}
