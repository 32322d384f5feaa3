//! The request path's cost: one snapshot `load()`, routing, and picking a backend,
//! for every balance mode; and the same while another thread stores new snapshots.

use arc_swap::ArcSwap;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vigil_conf::Config;
use vigil_healthcheck::{Endpoint, Member, Membership};
use vigil_proxy::dataplane::routing::RoutingTable;
use vigil_proxy::observe::metrics::ProxyMetrics;

fn config(balance: &str, backends: usize) -> Config {
    let mut y = String::from("listeners:\n  - address: 127.0.0.1:1\npools:\n  - name: web\n    routes:\n      - host: \"*.example.com\"\n        path_prefix: /api\n");
    y += &format!("    balance: {balance}\n");
    if balance == "consistent_hash" {
        y += "    hash_key: header:x-user\n";
    }
    y += "    backends:\n";
    for i in 0..backends {
        y += &format!(
            "      - address: 127.0.0.1:{}\n        weight: {}\n",
            20000 + i,
            1 + i % 3
        );
    }
    y += "  - name: other\n    backends:\n      - address: 127.0.0.1:19999\n";
    vigil_conf::from_str(&y, "bench").unwrap()
}

fn table(c: &Config, metrics: &ProxyMetrics) -> RoutingTable {
    let mut m = Membership::default();
    for p in &c.pools {
        let members = p
            .backends
            .iter()
            .map(|b| {
                let endpoint = Endpoint::new(&p.name, &b.address, b.socket_addr, 5);
                Member::up(Arc::new(endpoint), b.weight)
            })
            .collect();
        m.pools.insert(p.name.as_str().into(), members);
    }
    RoutingTable::build(&c.pools, &m, &Default::default(), metrics)
}

fn pick(swap: &ArcSwap<RoutingTable>) -> usize {
    let t = swap.load();
    let i = t.route_index("shop.example.com", "/api/cart").unwrap();
    let p = &t.pools[i];
    p.selector
        .pick(&p.members, &p.candidates, &[], b"user-42")
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let metrics = ProxyMetrics::new(&prometheus::Registry::new(), true).unwrap();
    for balance in [
        "round_robin",
        "weighted_round_robin",
        "least_requests",
        "consistent_hash",
    ] {
        for n in [3, 100] {
            let cfg = config(balance, n);
            let swap = ArcSwap::from_pointee(table(&cfg, &metrics));
            c.bench_function(&format!("load+route+pick/{balance}/{n}"), |b| {
                b.iter(|| black_box(pick(&swap)))
            });
        }
    }
    // A writer storing a fresh snapshot as fast as it can: the reader's worst case.
    let cfg = config("round_robin", 100);
    let swap = Arc::new(ArcSwap::from_pointee(table(&cfg, &metrics)));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (swap, stop, cfg) = (swap.clone(), stop.clone(), cfg.clone());
        std::thread::spawn(move || {
            let metrics = ProxyMetrics::new(&prometheus::Registry::new(), false).unwrap();
            let next = Arc::new(table(&cfg, &metrics));
            let mut stores = 0u64;
            while !stop.load(Ordering::Relaxed) {
                swap.store(next.clone());
                stores += 1;
            }
            stores
        })
    };
    c.bench_function("load+route+pick/round_robin/100/while-storing", |b| {
        b.iter(|| black_box(pick(&swap)))
    });
    stop.store(true, Ordering::Relaxed);
    let stores = writer.join().unwrap();
    eprintln!("writer stored {stores} snapshots during the contended bench");
}

criterion_group!(benches, bench);
criterion_main!(benches);
