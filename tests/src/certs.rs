//! Certificates for TLS tests, made by the `openssl` command line: a test CA and leaf
//! certificates it signs, with the names asked for.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A throwaway CA in its own directory.
pub struct TestCa {
    dir: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
}

/// A certificate chain file and its key file.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (make test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = crate::Vigil::temp_path(&format!("ca-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                &format!("/CN={name} test CA"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        TestCa {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
            dir,
        }
    }

    /// A leaf for `names` (DNS names, or IP addresses), signed by this CA.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let san: Vec<String> = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(_) => format!("IP:{n}"),
                Err(_) => format!("DNS:{n}"),
            })
            .collect();
        let ext = self.dir.join(format!("{file}.ext"));
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
                san.join(",")
            ),
        )
        .unwrap();
        let (key, csr, cert) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={}", names[0]),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                self.cert.to_str().unwrap(),
                "-CAkey",
                self.key.to_str().unwrap(),
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "30",
                "-extfile",
                ext.to_str().unwrap(),
            ],
        );
        Leaf {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }
}
