//! The process, its listeners, the admin API, the checker, metrics, DNS and the fleet.

use super::{Bound, Key, Section, Type};
use crate::bounds;
use crate::types::*;

pub(super) fn sections() -> Vec<Section> {
    vec![process(), listeners(), admin(), checker(), dns(), fleet()]
}

fn process() -> Section {
    Section {
        title: "Process",
        about: "Keys at the top of the file that shape the process. None of them is applied \
                by a reload: change them and restart (or `vigil run --upgrade`).",
        keys: vec![
            Key::derived("threads", Type::Integer, "the number of CPUs")
                .bound(Bound::Int(bounds::THREADS))
                .means("proxy worker threads; each new client connection goes to the one with the fewest open"),
            Key::word::<CpuAffinity>("cpu_affinity").means(
                "`auto`: when `threads` equals the CPUs vigil may run on, each worker is pinned to its own CPU; `off`: the kernel places them",
            ),
            Key::duration("grace_period", Config::DEFAULT_GRACE_PERIOD)
                .means("how long SIGTERM waits for requests in flight before exiting"),
            Key::derived(
                "upgrade_socket",
                Type::File,
                "`$TMPDIR/vigil-ADMINIP-ADMINPORT.upgrade.sock`",
            )
            .means("Unix socket through which `vigil run --upgrade` takes over this vigil's sockets and state"),
        ],
    }
}

fn listeners() -> Section {
    Section {
        title: "listeners",
        about: "Where clients connect: at least one. A reload cannot change a listener's \
                address, `max_connections`, `http2` or whether it has `tls` (certificates \
                and `min_version` do reload).",
        keys: vec![
            Key::required("listeners", Type::ListOfMappings)
                .means("the addresses vigil accepts requests on; at least one"),
            Key::required("listeners[].address", Type::Address)
                .means("`ip:port` to listen on"),
            Key::count(
                "listeners[].max_connections",
                ListenerConfig::DEFAULT_MAX_CONNECTIONS,
                bounds::MAX_CONNECTIONS,
            )
            .means("client connections open at once; more are closed at once and counted"),
            Key::derived("listeners[].http2", Type::Boolean, "`true` with `tls`, else `false`")
                .means("HTTP/2 to clients: with TLS by ALPN (h2 and http/1.1), plain by prior knowledge (h2c)"),
            Key::section("listeners[].tls")
                .means("HTTPS on this listener; absent: plain HTTP"),
            Key::required("listeners[].tls.certificates", Type::ListOfMappings)
                .means("certificates chosen by SNI from their DNS names (wildcards too); the first is the default"),
            Key::required("listeners[].tls.certificates[].cert", Type::File)
                .means("PEM certificate chain, read at start, by `vigil validate` and on every reload"),
            Key::required("listeners[].tls.certificates[].key", Type::File)
                .means("PEM private key of that certificate"),
            Key::word::<TlsVersion>("listeners[].tls.min_version")
                .means("the oldest TLS version accepted"),
        ],
    }
}

fn admin() -> Section {
    Section {
        title: "admin",
        about: "The admin listener: `/metrics`, `/health/*` and `POST /admin/*` (contract §4).",
        keys: vec![
            Key::section("admin").means("the admin listener"),
            Key::string("admin.address", &AdminConfig::DEFAULT_ADDRESS.to_string())
                .rule("not a listener's address; not loopback only with `token` or `allow_unauthenticated`")
                .means("`ip:port` of the admin listener (restart to change)"),
            Key::null("admin.token", Type::String)
                .rule("not empty")
                .means("when set, `POST /admin/*` needs `Authorization: Bearer TOKEN`"),
            Key::flag("admin.allow_unauthenticated", false)
                .means("run a non-loopback admin address without a token, on purpose"),
        ],
    }
}

fn checker() -> Section {
    Section {
        title: "checker and metrics",
        about: "Bounds on health checking as a whole, and how finely metrics are labelled.",
        keys: vec![
            Key::section("checker").means("the health checker as a whole"),
            Key::count(
                "checker.max_concurrent_checks",
                CheckerConfig::default().max_concurrent_checks,
                bounds::MAX_CONCURRENT_CHECKS,
            )
            .means("health checks in flight at once, over every pool"),
            Key::section("metrics").means("the Prometheus metrics on `/metrics`"),
            Key::flag("metrics.per_backend", MetricsConfig::default().per_backend)
                .means("per-backend series; `false` keeps only per-pool ones (restart to change)"),
        ],
    }
}

fn dns() -> Section {
    Section {
        title: "dns",
        about: "The resolver pools' `discovery` asks (contract §2 Discovery).",
        keys: vec![
            Key::section("dns").means("DNS for pools' `discovery`"),
            Key::new("dns.nameservers", Type::ListOfStrings, super::yaml_list::<&str>(&[]))
                .rule("each an IP address, with `:port` when not 53")
                .means("nameservers to ask, such as `127.0.0.1:8600`; `[]`: the system's (`/etc/resolv.conf`)"),
        ],
    }
}

fn fleet() -> Section {
    Section {
        title: "fleet",
        about: "vigils sharing their health checks through etcd, each backend probed by \
                `copies` of them (contract §2 Fleet, `docs/fleet.md`). Read at start only.",
        keys: vec![
            Key::section("fleet")
                .means("share health checks with other vigils; absent: this vigil checks every backend itself"),
            Key::required("fleet.etcd", Type::ListOfStrings)
                .rule("at least one, each `http://host:port` (no TLS yet)")
                .means("etcd endpoints"),
            Key::string("fleet.prefix", FleetConfig::DEFAULT_PREFIX)
                .rule("a key path such as `/vigil`")
                .means("the fleet's keys live under it"),
            Key::derived("fleet.node", Type::String, "`HOSTNAME-PID`")
                .rule(format!(
                    "`{}`, at most {} characters",
                    bounds::NODE_NAME,
                    bounds::NODE_NAME_MAX_LEN
                ))
                .means("this member's name, unique in the fleet"),
            Key::duration("fleet.lease_ttl", FleetConfig::DEFAULT_LEASE_TTL)
                .bound(Bound::Duration(bounds::LEASE_TTL))
                .means("a silent member loses its backends after this"),
            Key::count("fleet.copies", FleetConfig::DEFAULT_COPIES, bounds::FLEET_COPIES)
                .means("members probing each backend"),
        ],
    }
}
