//! TLS settings: listener certificates, HTTPS to backends, and the protocol spoken to
//! them. Files are only named here; the proxy reads them (at start and on every
//! reload) and reports what is wrong with them at the place recorded.

use super::Validator;
use crate::choice::one_of;
use crate::schema::*;
use crate::types::*;
use std::path::{Path, PathBuf};

impl Validator<'_> {
    /// Where `path`'s value is, for errors found later.
    pub(super) fn place(&self, path: &str) -> Place {
        let pos = self.marks.value(path);
        Place {
            file: self.file.to_string(),
            line: pos.line,
            col: pos.col,
        }
    }

    /// A file named in the config: relative paths are relative to the config file.
    fn file_path(&mut self, path: &str, text: Option<&str>, what: &str) -> Option<PathBuf> {
        match text {
            None | Some("") => {
                self.error(path, format!("{what} needs a file"));
                None
            }
            Some(t) => {
                let p = PathBuf::from(t);
                if p.is_relative() {
                    let dir = Path::new(self.file).parent().unwrap_or(Path::new(""));
                    Some(dir.join(p))
                } else {
                    Some(p)
                }
            }
        }
    }

    pub(super) fn listener_tls(&mut self, path: &str, raw: RawListenerTls) -> Option<ListenerTls> {
        let mut certificates = Vec::new();
        match raw.certificates {
            None => self.error(path, "tls needs `certificates`: at least one {cert, key}"),
            Some(list) if list.is_empty() => self.error(
                &format!("{path}.certificates"),
                "tls needs at least one certificate",
            ),
            Some(list) => {
                for (i, c) in list.iter().enumerate() {
                    let at = format!("{path}.certificates.{i}");
                    let cert = self.file_path(&format!("{at}.cert"), c.cert.as_deref(), "cert");
                    let key = self.file_path(&format!("{at}.key"), c.key.as_deref(), "key");
                    if let (Some(cert), Some(key)) = (cert, key) {
                        certificates.push(CertificateFiles {
                            cert,
                            key,
                            cert_at: self.place(&format!("{at}.cert")),
                            key_at: self.place(&format!("{at}.key")),
                        });
                    }
                }
            }
        }
        let words = one_of::<TlsVersion>(|w| format!("{w:?}"));
        let min_version: TlsVersion = (self.choice(
            &format!("{path}.min_version"),
            raw.min_version.as_deref(),
            |other| format!("min_version {other:?}: use {words}"),
        ))
        .unwrap_or_default();
        (!certificates.is_empty()).then_some(ListenerTls {
            certificates,
            min_version,
        })
    }

    pub(super) fn upstream_tls(&mut self, path: &str, raw: RawUpstreamTls) -> UpstreamTls {
        let ca = raw
            .ca
            .as_deref()
            .and_then(|c| self.file_path(&format!("{path}.ca"), Some(c), "ca"));
        if let Some(sni) = &raw.sni {
            if sni.is_empty() || sni.bytes().any(|b| b <= b' ' || b == b'/' || b == b':') {
                self.error(
                    &format!("{path}.sni"),
                    format!("sni {sni:?} is not a host name"),
                );
            }
        }
        UpstreamTls {
            sni: raw.sni,
            ca_at: ca.as_ref().map(|_| self.place(&format!("{path}.ca"))),
            ca,
            verify: raw.verify.unwrap_or(UpstreamTls::DEFAULT_VERIFY),
        }
    }

    /// `protocol`, checked against `tls` (h2 needs it) and the check type (grpc needs h2).
    pub(super) fn protocol(
        &mut self,
        path: &str,
        raw: Option<&str>,
        tls: bool,
        check: CheckKind,
    ) -> Protocol {
        let words = one_of::<Protocol>(str::to_string);
        let Some(protocol) = self.choice(&format!("{path}.protocol"), raw, |other| {
            format!("unknown protocol {other:?}: use {words}")
        }) else {
            return Protocol::default();
        };
        if protocol == Protocol::H2 && !tls {
            self.error(
                &format!("{path}.protocol"),
                "protocol h2 needs `tls` on the pool (h2 is negotiated with ALPN)",
            );
        }
        if check == CheckKind::Grpc && protocol != Protocol::H2 {
            self.error(
                &format!("{path}.health_check.type"),
                "a grpc health check needs `protocol: h2` on the pool",
            );
        }
        protocol
    }
}
