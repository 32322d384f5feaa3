#!/usr/bin/env python3
"""Paired A/B of two vigil builds beside HAProxy, for a host whose speed drifts: the three
proxies stay up, and short h2load measurements alternate between them PAIRS times, so
each of vigil's is compared with the before build's and HAProxy's taken next to it.

    VIGIL_BEFORE=path [VIGIL=path] [MODE=h2|grpc] [THREADS=2] [C=16 M=10] [PAIRS=10 SECS=4] \
        python3 bench/pairs.py

MODE=h2: HTTP/2 over TLS to three HTTP/1.1 `fleet` backends (as `harness.py h2`);
MODE=grpc: gRPC unary calls over TLS to three TLS `grpc_backend`s (as `harness.py grpc`).
VIGIL: the build under test (default target/release/vigil). CPU per request from /proc; prints the medians and the per-pair ratios (median, range).
h2load -t1, the backends and the proxies share the 2 cores."""
import os, statistics, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H

threads = int(os.environ.get("THREADS", "2"))
c, m = int(os.environ.get("C", "16")), int(os.environ.get("M", "10"))
pairs, secs = int(os.environ.get("PAIRS", "10")), int(os.environ.get("SECS", "4"))
mode = os.environ.get("MODE", "h2")
cert, key, both = H.bench_cert("pairs")
if mode == "grpc":
    _, addrs, pool, extra = H.grpc_backends(cert, key)
    path = "echo.Echo/Say"
    haproxy = H.haproxy_conf(f"127.0.0.1:19220 ssl crt {both} alpn h2", addrs,
                             server_opts=" ssl verify none alpn h2", threads=threads)
else:
    addrs = [H.fleet(1, f"pairs-backend{i}")[2][0] for i in range(3)]
    pool = H.pool_yaml("web", addrs)
    extra, path = (), ""
    haproxy = H.haproxy_conf(f"127.0.0.1:19220 ssl crt {both} alpn h2,http/1.1", addrs, threads=threads)
top = f"threads: {threads}\n"

try:
    procs = {"vigil": (19230, H.tls_vigil(19230, pool, top, cert, key, os.environ.get("VIGIL"))),
             "before": (19240, H.tls_vigil(19240, pool, top, cert, key, os.environ["VIGIL_BEFORE"], "vigil-before")),
             "haproxy": (19220, H.start_haproxy(haproxy, "haproxy-pairs"))}
    H.wait_port("127.0.0.1:19220")
    url = lambda port: f"https://127.0.0.1:{port}/{path}"
    for port, _ in procs.values():
        H.h2load(url(port), 2, c, m, extra)
    cpu = {n: [] for n in procs}
    for r in range(pairs):
        for n in (list(procs) if r % 2 == 0 else list(procs)[::-1]):
            port, p = procs[n]
            c0 = H.cpu_seconds(p.pid)
            w = H.h2load(url(port), secs, c, m, extra)
            cpu[n].append((H.cpu_seconds(p.pid) - c0) / max(w["requests"], 1) * 1e6)
        H.log(f"pair {r}: " + ", ".join(f"{n} {cpu[n][-1]:.1f} us" for n in procs))

    def ratio(a, b):
        r = [x / y for x, y in zip(cpu[a], cpu[b])]
        return f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})"
    print(f"{mode} c{c} m{m}, {threads} worker(s), {pairs} pairs of {secs} s: CPU us/request medians "
          + ", ".join(f"{n} {statistics.median(v):.1f}" for n, v in cpu.items())
          + f"; per pair: vigil / before {ratio('vigil', 'before')}, vigil / haproxy {ratio('vigil', 'haproxy')}, "
          f"before / haproxy {ratio('before', 'haproxy')}")
finally:
    H.cleanup()
