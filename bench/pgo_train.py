#!/usr/bin/env python3
"""The traffic an instrumented vigil (built with `-Cprofile-generate`) serves so that its
profile says where a proxy's time goes: `make pgo` runs it and merges what the binary
wrote into `pgo/vigil.profdata`, which the release build then optimises with.

    python3 bench/pgo_train.py INSTRUMENTED_VIGIL [SECONDS]

Every shape the request path is measured with, a few seconds each, at two workers:
HTTP/1.1 GETs and 1 KiB POSTs (wrk), the same with the access log on (text, then JSON),
HTTPS over HTTP/1.1, HTTP/2 over TLS (GETs, 1 KiB POSTs, 16 x 10 and 1 x 100 streams),
h2c, and gRPC unary calls to `protocol: h2` backends over TLS; the health checks run
beside all of it. Each vigil is stopped with SIGTERM so that it writes its profile."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H

binary = sys.argv[1]
secs = int(sys.argv[2]) if len(sys.argv) > 2 else 4
top = "threads: 2\n"


def served(name, port, p, runs):
    """Runs each load of `runs` against the vigil `p`, then stops it (SIGTERM)."""
    try:
        for run in runs:
            w = run(port)
            if w["requests"] == 0 or w["errors"] > w["requests"] // 100:
                raise SystemExit(f"{name}: {w['requests']} requests, {w['errors']} errors")
            H.log(f"{name}: {w['requests']} requests")
    finally:
        H.stop(p)
        if p.returncode not in (0, -15):
            raise SystemExit(f"{name}: vigil exited with {p.returncode}")


try:
    addrs = [H.fleet(1, f"pgo-backend{i}")[2][0] for i in range(3)]
    pool = H.pool_yaml("web", addrs)
    post = H.wrk_post_script(1024)
    body = os.path.join(H.WORK, "pgo-post.bin")
    open(body, "wb").write(b"x" * 1024)
    http1 = [lambda port: H.wrk(f"http://127.0.0.1:{port}/", secs, 64),
             lambda port: H.wrk(f"http://127.0.0.1:{port}/", secs, 64, ("-s", post))]
    for name, log in (("plain", ""), ("text log", "text"), ("json log", "json")):
        vtop = top + (f"access_log:\n  format: {log}\n  path: {H.WORK}/pgo-{log}.log\n" if log else "")
        served(f"HTTP/1.1, {name}", 19300, H.vigil_ready(19300, addrs, vtop, binary, "vigil-pgo"), http1)

    cert, key, _ = H.bench_cert("pgo")
    tls_url = lambda port, path="": f"https://127.0.0.1:{port}/{path}"
    h2 = [lambda port: H.wrk(tls_url(port), secs, 64),
          lambda port: H.h2load(tls_url(port), secs, 16, 10),
          lambda port: H.h2load(tls_url(port), secs, 1, 100),
          lambda port: H.h2load(tls_url(port), secs, 16, 10,
                                ("-d", body, "-H", "content-type: application/octet-stream"))]
    served("TLS: HTTP/1.1 and HTTP/2", 19310, H.tls_vigil(19310, pool, top, cert, key, binary, "vigil-pgo-tls"), h2)

    h2c = H.vigil_config("127.0.0.1:19320", "127.0.0.1:19321", pool, top).replace(
        "  - address: 127.0.0.1:19320\n", "  - address: 127.0.0.1:19320\n    http2: true\n")
    p = H.vigil(h2c, "vigil-pgo-h2c", binary)[0]
    H.wait_for("vigil ready", lambda: H.http("http://127.0.0.1:19321/health/ready")[0] == 200)
    served("h2c", 19320, p, [lambda port: H.h2load(f"http://127.0.0.1:{port}/", secs, 16, 10)])

    _, _, grpc_pool, extra = H.grpc_backends(cert, key)
    served("gRPC", 19330, H.tls_vigil(19330, grpc_pool, top, cert, key, binary, "vigil-pgo-grpc"),
           [lambda port: H.h2load(tls_url(port, "echo.Echo/Say"), secs, 16, 10, extra),
            lambda port: H.h2load(tls_url(port, "echo.Echo/Say"), secs, 1, 100, extra)])
finally:
    H.cleanup()
