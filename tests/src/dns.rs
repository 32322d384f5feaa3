//! A real `dnsmasq` (Debian's `dnsmasq-base`) on a loopback port, serving only the
//! records a test gives it, restarted to change them.

use crate::free_port;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// One DNS record dnsmasq serves.
#[derive(Debug, Clone)]
pub enum Record {
    /// `name IN SRV priority weight port target`.
    Srv {
        name: String,
        target: String,
        port: u16,
        priority: u16,
        weight: u16,
    },
    /// `name IN A ip` (one line per address; a name may have several).
    A { name: String, ip: String },
}

impl Record {
    pub fn srv(name: &str, target: &str, port: u16, weight: u16) -> Record {
        Record::Srv {
            name: name.into(),
            target: target.into(),
            port,
            priority: 10,
            weight,
        }
    }

    pub fn a(name: &str, ip: &str) -> Record {
        Record::A {
            name: name.into(),
            ip: ip.into(),
        }
    }

    fn arg(&self) -> String {
        match self {
            Record::Srv {
                name,
                target,
                port,
                priority,
                weight,
            } => format!("--srv-host={name},{target},{port},{priority},{weight}"),
            Record::A { name, ip } => format!("--host-record={name},{ip}"),
        }
    }
}

pub struct Dnsmasq {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts dnsmasq on a free loopback port, authoritative for `.test` (a name it
    /// has no record for is NXDOMAIN, nothing is forwarded), and waits until it answers.
    pub fn start(records: &[Record]) -> Dnsmasq {
        let mut d = Dnsmasq {
            addr: free_port(),
            child: None,
        };
        d.restart(records);
        d
    }

    fn binary() -> &'static str {
        if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
            "/usr/sbin/dnsmasq"
        } else {
            "dnsmasq"
        }
    }

    /// Stops it (if running) and starts it again on the same port with `records`.
    pub fn restart(&mut self, records: &[Record]) {
        self.stop();
        let mut cmd = Command::new(Self::binary());
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
            "--local=/test/",
            "--local-ttl=0",
            "--log-facility=/dev/null",
        ])
        .arg(format!("--listen-address={}", self.addr.ip()))
        .arg(format!("--port={}", self.addr.port()))
        .args(records.iter().map(Record::arg))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .expect("start dnsmasq (apt-get install dnsmasq-base)");
        self.child = Some(child);
        // Up when its TCP port takes connections (it binds UDP first).
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr).is_err() {
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                let mut err = String::new();
                if let Some(mut e) = self.child.take().and_then(|mut c| c.stderr.take()) {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                panic!("dnsmasq exited ({status}): {err}");
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it: lookups fail until it is restarted.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
