#!/usr/bin/env python3
"""vigil's end-to-end benchmarks, each beside its peers in the same run.

    bench/harness.py proxy     # throughput, p50/p99, CPU per request: vigil, nginx, HAProxy, Pingora's LB
    bench/harness.py checker   # 10,000 backends at 1 s: vigil's checker vs pingora-load-balancing
    bench/harness.py death     # a backend killed under load: vigil, HAProxy, nginx
    bench/harness.py reload    # 100 reloads under load vs none
    bench/harness.py soak      # 10 min, 1,000 backends, a reload every 10 s, one flapping
    bench/harness.py edge      # access log on vs off; the edge limits vs the build before them
    bench/harness.py threads   # 1, 2 and 4 workers: CPU per request, p99, new backend connections
    bench/harness.py memory    # resident memory per idle keep-alive client at 10,000 connections
    bench/harness.py tls       # HTTPS keep-alive and a handshake per request: vigil, HAProxy, nginx
    bench/harness.py frozen    # a backend frozen (SIGSTOP) under an open-loop stream: vigil, HAProxy, nginx
    bench/harness.py slow      # one backend 10x slower: vigil's balancers vs nginx/HAProxy least-conn
    bench/harness.py fleet     # 3 and 5 vigils x 1,000 backends at 1 s, sharing health through etcd or not
    bench/harness.py split     # user and system CPU per request, and syscalls per request (strace): vigil vs HAProxy
    bench/harness.py sched     # two workers' waits for a CPU (perf sched): vigil pinned and not, HAProxy, nginx
    bench/harness.py shapes    # CPU per request and p99 for GET, GET with every proxy's access log on, POST 1 KiB: vigil, HAProxy, nginx
    bench/harness.py chaos-soak # issue #28: two vigils on etcd, every fault at once, 10 min (CHAOS_SECONDS)
    bench/harness.py chaos     # 90 s of kills, freezes, restarts and reloads under 200 req/s: requests lost (issue #24)
    bench/harness.py ab A=PATH B=PATH  # interleaved A/B of vigil builds beside HAProxy: user/system CPU per request
    bench/harness.py overload  # issue #30: 1.2x capacity at backends of 8 places: vigil max_requests + queue, HAProxy maxconn, nginx max_conns
    bench/harness.py retry-storm # issue #30: every backend fails half its requests: vigil's retry budget vs none, HAProxy, nginx
    bench/harness.py uneven    # issue #30: one backend twice as fast, all reporting load: vigil's balancers, load_report

Everything listens on 127.0.0.1. The machine has 2 cores: wrk, the backends and
the proxy share them, so figures are for comparison within one run, not absolutes.
Prints a Markdown section to paste into bench/RESULTS.md.
"""

import calendar
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
# The helpers (fleet, grpc_backend, the peers' own binaries): `make test` builds them with
# its `testing` profile (VIGIL_TOOLS=target/testing); vigil is always target/release's.
TOOLS = os.path.join(ROOT, os.environ.get("VIGIL_TOOLS", os.path.join("target", "release")))
WORK = tempfile.mkdtemp(prefix="vigil-bench-")
TICK = os.sysconf("SC_CLK_TCK")
PROCS = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def start(cmd, name, **kw):
    out = open(os.path.join(WORK, name + ".log"), "w")
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    PROCS.append(p)
    return p


def stop(p, sig=signal.SIGTERM):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cleanup():
    for p in PROCS:
        if p.poll() is None:
            p.kill()


def wait_for(what, cond, limit=60):
    end = time.time() + limit
    while time.time() < end:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def http(url, data=None, timeout=5):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = open(f"/proc/{p}/task/{p}/children").read().split()
        except OSError:
            kids = []
        todo += [int(k) for k in kids]
    return out


def cpu_seconds(pid):
    total = 0
    for p in tree(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / TICK


# This machine is a VM on a shared host: when the host takes CPU from it ("steal" in
# /proc/stat), every process is slowed and figures measured then are not comparable. A
# measurement with more than MAX_STEAL of the CPU stolen is taken again, up to
# STEAL_TRIES times in all (the last is kept, with its steal printed).
MAX_STEAL = float(os.environ.get("MAX_STEAL", "0.03"))
STEAL_TRIES = 4


def cpu_stat():
    return [int(x) for x in open("/proc/stat").readline().split()[1:9]]


def steal_since(before):
    d = [b - a for a, b in zip(before, cpu_stat())]
    return d[7] / max(sum(d), 1)


def rss_mib(pid):
    total = 0
    for p in tree(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def metrics(admin):
    _, text = http(f"http://{admin}/metrics")
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def hist_quantile(before, after, family, q, labels=""):
    """q-quantile (bucket upper bound) of a histogram's increase between two scrapes."""
    buckets = []
    for k, v in after.items():
        m = re.fullmatch(re.escape(family) + r'_bucket\{' + labels + r'le="([^"]+)"\}', k)
        if m:
            buckets.append((float(m.group(1)), v - before.get(k, 0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    for le, n in buckets:
        if total and n >= q * total:
            return le
    return float("nan")


def fleet(count, name, flap=None, delay_ms=None):
    out = os.path.join(WORK, name + ".txt")
    if os.path.exists(out):
        os.remove(out)
    cmd = [os.path.join(TOOLS, "fleet"), "--count", str(count), "--out", out]
    if flap:
        cmd += ["--flap", str(flap)]
    if delay_ms:
        cmd += ["--delay-ms", str(delay_ms)]
    p = start(cmd, name)
    wait_for(f"{name} up", lambda: os.path.exists(out) and len(open(out).read().split()) == count)
    return p, out, open(out).read().split()


def fleet_again(name, addr):
    """A killed one-backend `fleet` started again on its address (`fleet(1, name)` first)."""
    out = os.path.join(WORK, name + ".txt")
    return start([os.path.join(TOOLS, "fleet"), "--count", "1", "--out", out, "--bind", addr], name + "-again")


def fleet_stats(file):
    # The fleet rewrites the file once a second: read again if caught mid-write.
    for _ in range(50):
        parts = open(file + ".stats").read().split()
        if len(parts) >= 4:
            return {"connections": int(parts[1]), "requests": int(parts[3])}
        time.sleep(0.02)
    raise SystemExit(f"{file}.stats: unreadable")


def vigil(config, name="vigil", binary=None):
    path = os.path.join(WORK, name + ".yaml")
    open(path, "w").write(config)
    p = start([binary or os.path.join(BIN, "vigil"), "run", "-c", path], name)
    admin = re.search(r"admin:\n  address: (\S+)", config).group(1)
    wait_for("vigil live", lambda: http(f"http://{admin}/health/live")[0] == 200)
    return p, admin, path


def vigil_ready(port, addrs, top, binary=None, name="vigil"):
    """vigil on 127.0.0.1:port (admin on port + 1) in front of `addrs`, once ready."""
    cfg = vigil_config(f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}", pool_yaml("web", addrs), top)
    p = vigil(cfg, name, binary)[0]
    wait_for("vigil ready", lambda: http(f"http://127.0.0.1:{port + 1}/health/ready")[0] == 200)
    return p


def vigil_config(listen, admin, pools, top="threads: 1\n"):
    return f"{top}grace_period: 1s\nlisteners:\n  - address: {listen}\nadmin:\n  address: {admin}\npools:\n{pools}"


def pool_yaml(name, addrs, extra=""):
    s = f"  - name: {name}\n    backends:\n"
    s += "".join(f"      - address: {a}\n" for a in addrs)
    return s + extra


def wrk_post_script(size):
    """A wrk script (in WORK) that POSTs `size` bytes of application/octet-stream."""
    path = os.path.join(WORK, f"post{size}.lua")
    open(path, "w").write(f'wrk.method = "POST"\nwrk.body = string.rep("x", {size})\n'
                          'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    return path


def wrk(url, seconds, conns=32, extra=()):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", *extra, url]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    return {"requests": reqs, "rps": reqs / seconds, "p50": lat("50"), "p99": lat("99"), "errors": errors, "raw": out}


# ---------------------------------------------------------------- peers' configs

def nginx_conf(listen, addrs, extra_upstream="", extra_location="", workers=1, access_log="off",
               connections=4096):
    servers = "".join(f"    server {a}{extra_upstream};\n" for a in addrs)
    return f"""worker_processes {workers};
daemon off;
pid {WORK}/nginx.pid;
error_log {WORK}/nginx-error.log error;
worker_rlimit_nofile {connections * 2 + 100};
events {{ worker_connections {connections * 2}; }}
http {{
  access_log {access_log};
  upstream pool {{
{servers}    keepalive 64;
  }}
  server {{
    listen {listen};
    location / {{
      proxy_pass http://pool;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
{extra_location}    }}
  }}
}}
"""


# nginx passes request bodies on as they arrive, as vigil and HAProxy do (it would
# otherwise buffer each to a file first), with no size limit.
NGINX_STREAMED_BODIES = "      proxy_request_buffering off;\n      client_max_body_size 0;\n"


def haproxy_access_log(conf):
    """`conf` (from haproxy_conf) with an access line per request (`option httplog`) to
    stdout, the process's log file."""
    conf = conf.replace("log stderr format rfc5424 local0 notice", "log stdout format raw local0 info")
    return conf.replace("  log global\n", "  log global\n  option httplog\n")


def haproxy_conf(listen, addrs, server_opts="", backend_opts="", threads=1, maxconn=4096):
    servers = "".join(f"  server s{i} {a}{server_opts}\n" for i, a in enumerate(addrs))
    return f"""global
  nbthread {threads}
  maxconn {maxconn}
  log stderr format rfc5424 local0 notice
defaults
  mode http
  log global
  timeout connect 3s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind {listen}
  default_backend pool
backend pool
  balance roundrobin
{backend_opts}{servers}"""


def haproxy_reuse_safe(listen, addrs, threads):
    """HAProxy as the threads, split and sched benchmarks run it: `http-reuse safe`."""
    return haproxy_conf(listen, addrs, threads=threads).replace("http-reuse always", "http-reuse safe")


def start_nginx(conf, name="nginx"):
    path = os.path.join(WORK, name + ".conf")
    open(path, "w").write(conf)
    return start(["nginx", "-c", path, "-p", WORK], name)


def start_haproxy(conf, name="haproxy"):
    path = os.path.join(WORK, name + ".cfg")
    open(path, "w").write(conf)
    return start(["haproxy", "-f", path], name)


def wait_port(addr):
    host, port = addr.rsplit(":", 1)
    import socket
    def up():
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    wait_for(f"{addr} listening", up)


# ---------------------------------------------------------------- benchmarks

def bench_proxy(rounds=3, seconds=15):
    backends = [fleet(1, f"proxy-backend{i}") for i in range(3)]
    addrs = [b[2][0] for b in backends]
    all_file = os.path.join(WORK, "proxy-all.txt")
    open(all_file, "w").write("\n".join(addrs) + "\n")
    peers = {
        "vigil": lambda: vigil(vigil_config("127.0.0.1:18800", "127.0.0.1:18801", pool_yaml("web", addrs)))[0],
        "nginx": lambda: start_nginx(nginx_conf("127.0.0.1:18810", addrs)),
        "haproxy": lambda: start_haproxy(haproxy_conf("127.0.0.1:18820", addrs)),
        "pingora-lb": lambda: start([os.path.join(TOOLS, "pingora_proxy"), "127.0.0.1:18830", all_file], "pingora-lb"),
        # Floors, not products: pingora-core's HTTP/1 session and connector without
        # pingora-proxy, with Pingora's connection pool and with a bare idle list.
        "core-pool": lambda: start([os.path.join(TOOLS, "core_proxy"), "127.0.0.1:18840", all_file], "core-pool"),
        "core-bare": lambda: start([os.path.join(TOOLS, "core_proxy"), "127.0.0.1:18850", all_file, "--own-pool"],
                                   "core-bare"),
    }
    ports = {"vigil": "127.0.0.1:18800", "nginx": "127.0.0.1:18810", "haproxy": "127.0.0.1:18820",
             "pingora-lb": "127.0.0.1:18830", "core-pool": "127.0.0.1:18840", "core-bare": "127.0.0.1:18850"}
    results = {k: [] for k in peers}
    for r in range(rounds):
        order = list(peers) if r % 2 == 0 else list(reversed(list(peers)))
        for name in order:
            p = peers[name]()
            wait_port(ports[name])
            if name == "vigil":
                wait_for("vigil ready", lambda: http("http://127.0.0.1:18801/health/ready")[0] == 200)
            wrk(f"http://{ports[name]}/", 3)  # warm-up: keep-alive pools filled
            c0 = cpu_seconds(p.pid)
            w = wrk(f"http://{ports[name]}/", seconds)
            cpu = cpu_seconds(p.pid) - c0
            w["cpu_us_per_req"] = cpu / max(w["requests"], 1) * 1e6
            w["cpu_share"] = cpu / seconds
            results[name].append(w)
            log(f"round {r} {name}: {w['rps']:.0f} req/s p50 {w['p50']:.3f} ms p99 {w['p99']:.3f} ms "
                f"cpu {w['cpu_us_per_req']:.1f} us/req errors {w['errors']}")
            stop(p, signal.SIGINT if name in ("vigil", "pingora-lb", "core-pool", "core-bare") else signal.SIGTERM)
            time.sleep(0.5)
    print(f"\n### Proxy throughput ({rounds} rounds of {seconds} s, medians)\n")
    print("| proxy | req/s | p50 ms | p99 ms | CPU µs/request | proxy CPU share | errors |")
    print("|---|---|---|---|---|---|---|")
    med = lambda k, n: statistics.median(x[k] for x in results[n])
    for n in peers:
        print(f"| {n} | {med('rps', n):.0f} | {med('p50', n):.3f} | {med('p99', n):.3f} | "
              f"{med('cpu_us_per_req', n):.1f} | {med('cpu_share', n):.2f} | {sum(x['errors'] for x in results[n])} |")
    hv = med("cpu_us_per_req", "vigil") / med("cpu_us_per_req", "haproxy")
    nv = med("p99", "vigil") / med("p99", "nginx")
    print(f"\nvigil CPU/request ÷ HAProxy's: {hv:.2f}; vigil p99 ÷ nginx p99: {nv:.2f}")


def interleaved(peers, rounds, seconds, conns=32, label="", totals=None, scheme="http", extra=(),
                before_stop=None, load=None):
    """Runs every peer (name -> (port, start)) `rounds` times, in alternating order:
    started, warmed for 2 s, measured for `seconds` with `wrk -t1 -cCONNS` (or
    `load(url, seconds)`, which returns what `wrk` does), stopped. Adds CPU µs per
    request to each result and, given `totals` (connections and requests counted at the
    backends), new backend connections per 1,000 requests."""
    if load is None:
        load = lambda url, s: wrk(url, s, conns=conns, extra=extra)
    results = {k: [] for k in peers}
    for r in range(rounds):
        order = list(peers) if r % 2 == 0 else list(reversed(list(peers)))
        for name in order:
            port, run = peers[name]
            p = run()
            wait_port(f"127.0.0.1:{port}")
            url = f"{scheme}://127.0.0.1:{port}/"
            load(url, 2)
            for attempt in range(STEAL_TRIES):
                k0, q0 = totals() if totals else (0, 0)
                c0, s0 = cpu_seconds(p.pid), cpu_stat()
                w = load(url, seconds)
                cpu = cpu_seconds(p.pid) - c0
                w["steal"] = steal_since(s0)
                if w["steal"] <= MAX_STEAL:
                    break
                log(f"{label} round {r} {name}: {w['steal'] * 100:.0f}% of the CPU stolen by the host, measuring again")
            w["cpu_us_per_req"] = cpu / max(w["requests"], 1) * 1e6
            if totals:
                k1, q1 = totals()
                w["new_conns_per_1k"] = (k1 - k0) / max(q1 - q0, 1) * 1000
            results[name].append(w)
            log(f"{label} round {r} {name}: steal {w['steal'] * 100:.1f}% {w['rps']:.0f} req/s p99 {w['p99']:.3f} ms "
                f"cpu {w['cpu_us_per_req']:.1f} us/req new conns/1k {w.get('new_conns_per_1k', float('nan')):.2f} "
                f"errors {w['errors']}")
            if before_stop:
                before_stop(name)
            stop(p, signal.SIGINT if name.startswith("vigil") else signal.SIGTERM)
            time.sleep(0.5)
    return results


def bench_edge(rounds=3, seconds=10):
    """The access log on (JSON, text; to a file) vs off, and the edge work (head limits,
    pipelining, Host check) vs the vigil build before it (VIGIL_BEFORE=path/to/vigil),
    at one and two worker threads, beside nginx (log off/on) and HAProxy (log off)."""
    backends = [fleet(1, f"edge-backend{i}") for i in range(3)]
    addrs = [b[2][0] for b in backends]
    before = os.environ.get("VIGIL_BEFORE")
    for threads in (1, 2):
        top = f"threads: {threads}\n"
        def v(port, extra="", binary=None, name="vigil"):
            return vigil_ready(port, addrs, top + extra, binary, name)
        log_json = f"access_log:\n  format: json\n  path: {WORK}/access-{threads}.json\n"
        log_text = f"access_log:\n  format: text\n  path: {WORK}/access-{threads}.txt\n"
        peers = {
            "vigil log off": (18900, lambda: v(18900)),
            "vigil log json": (18902, lambda: v(18902, log_json)),
            "vigil log text": (18904, lambda: v(18904, log_text)),
            "nginx log off": (18910, lambda: start_nginx(nginx_conf("127.0.0.1:18910", addrs, workers=threads))),
            "nginx log on": (18911, lambda: start_nginx(nginx_conf(
                "127.0.0.1:18911", addrs, workers=threads, access_log=f"{WORK}/nginx-access.log"), "nginx-log")),
            "haproxy": (18920, lambda: start_haproxy(haproxy_conf("127.0.0.1:18920", addrs, threads=threads))),
        }
        if before:
            peers["vigil before edge"] = (18906, lambda: v(18906, binary=before, name="vigil-before"))
        results = interleaved(peers, rounds, seconds, label=f"threads {threads}")
        med = lambda k, n: statistics.median(x[k] for x in results[n])
        print(f"\n### Edge: access log and limits, {threads} worker thread(s) "
              f"({rounds} rounds of {seconds} s, medians; wrk -t1 -c32 on the same 2 cores)\n")
        print("| proxy | req/s | p99 ms | CPU µs/request | ÷ vigil log off | errors |")
        print("|---|---|---|---|---|---|")
        base = med("cpu_us_per_req", "vigil log off")
        for n in peers:
            print(f"| {n} | {med('rps', n):.0f} | {med('p99', n):.3f} | {med('cpu_us_per_req', n):.1f} | "
                  f"{med('cpu_us_per_req', n) / base:.2f} | {sum(x['errors'] for x in results[n])} |")


def bench_cert(name):
    """A self-signed ECDSA P-256 certificate for bench.test and 127.0.0.1 in WORK: the
    paths of its certificate, its key, and both in one file (HAProxy's form)."""
    cert, key, both = (os.path.join(WORK, f) for f in (f"{name}.pem", f"{name}.key", f"{name}-both.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "7", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test,IP:127.0.0.1"], check=True, capture_output=True)
    open(both, "w").write(open(cert).read() + open(key).read())
    return cert, key, both


def bench_tls(rounds=3, seconds=8):
    """TLS at the edge, one worker each, the same ECDSA P-256 certificate: keep-alive
    HTTPS requests (CPU per request, p99), then a new TLS connection per request
    (`Connection: close`: CPU per handshake, handshakes per second). vigil (rustls),
    HAProxy and nginx (OpenSSL). THREADS=n: n workers each (default 1)."""
    threads = int(os.environ.get("THREADS", "1"))
    backends = [fleet(1, f"tls-backend{i}") for i in range(3)]
    addrs = [b[2][0] for b in backends]
    cert, key, both = bench_cert("tls")
    tls = f"    tls:\n      certificates:\n        - {{cert: {cert}, key: {key}}}\n"

    def v(port):
        cfg = vigil_config(f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}", pool_yaml("web", addrs),
                           f"threads: {threads}\n")
        cfg = cfg.replace(f"  - address: 127.0.0.1:{port}\n", f"  - address: 127.0.0.1:{port}\n{tls}", 1)
        p = vigil(cfg)[0]
        wait_for("vigil ready", lambda: http(f"http://127.0.0.1:{port + 1}/health/ready")[0] == 200)
        return p

    nginx = nginx_conf("127.0.0.1:19010", addrs, workers=threads).replace(
        "listen 127.0.0.1:19010;",
        f"listen 127.0.0.1:19010 ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};")
    haproxy = haproxy_conf("127.0.0.1:19020 ssl crt " + both, addrs, threads=threads)
    peers = {
        "vigil (rustls)": (19000, lambda: v(19000)),
        "nginx (OpenSSL)": (19010, lambda: start_nginx(nginx)),
        "haproxy (OpenSSL)": (19020, lambda: start_haproxy(haproxy)),
    }
    for title, extra in (("keep-alive HTTPS requests", ()),
                         ("a new TLS connection per request", ("-H", "Connection: close"))):
        results = interleaved(peers, rounds, seconds, label=title, scheme="https", extra=extra)
        med = lambda k, n: statistics.median(x[k] for x in results[n])
        print(f"\n### TLS: {title}, {threads} worker(s) each ({rounds} rounds of {seconds} s, medians; "
              f"wrk -t1 -c32 on the same 2 cores)\n")
        print("| proxy | req/s | p99 ms | CPU µs/request | ÷ HAProxy | errors |")
        print("|---|---|---|---|---|---|")
        base = med("cpu_us_per_req", "haproxy (OpenSSL)")
        for n in peers:
            print(f"| {n} | {med('rps', n):.0f} | {med('p99', n):.3f} | {med('cpu_us_per_req', n):.1f} | "
                  f"{med('cpu_us_per_req', n) / base:.2f} | {sum(x['errors'] for x in results[n])} |")


def pingora_path(start_vigil):
    """Starts vigil with VIGIL_FAST_PATH=off: every request takes Pingora's proxy."""
    os.environ["VIGIL_FAST_PATH"] = "off"
    try:
        return start_vigil()
    finally:
        del os.environ["VIGIL_FAST_PATH"]


def bench_threads(rounds=3, seconds=8, conns=(1, 32)):
    """vigil, HAProxy (http-reuse safe) and nginx (keepalive 64) at 1, 2 and 4 workers:
    CPU per request, req/s, p99 and new backend connections per 1,000 requests, counted
    at the backends (vigil's health checks use their own few connections). A vigil
    binary from before the pool patch can run beside (VIGIL_BEFORE=path), and the same
    build with `cpu_affinity: off` (AFFINITY_OFF=1). ROUNDS=n takes n interleaved rounds
    instead of 3."""
    rounds = int(os.environ.get("ROUNDS", rounds))
    backends = [fleet(1, f"threads-backend{i}") for i in range(3)]
    addrs = [b[2][0] for b in backends]
    before = os.environ.get("VIGIL_BEFORE")
    def backend_totals():
        time.sleep(1.1)  # the fleet writes its counters once a second
        st = [fleet_stats(b[1]) for b in backends]
        return sum(x["connections"] for x in st), sum(x["requests"] for x in st)
    for threads in [int(t) for t in os.environ.get("THREADS", "1,2,4").split(",")]:
        def v(port, binary=None, name="vigil"):
            return vigil_ready(port, addrs, f"threads: {threads}\n", binary, name)
        peers = {
            "vigil": (18960, lambda: v(18960)),
            "haproxy": (18970, lambda: start_haproxy(haproxy_reuse_safe("127.0.0.1:18970", addrs, threads))),
            "nginx": (18980, lambda: start_nginx(nginx_conf("127.0.0.1:18980", addrs, workers=threads))),
        }
        if before:
            peers["vigil before"] = (18962, lambda: v(18962, before, "vigil-before"))
        if os.environ.get("AFFINITY_OFF"):
            # The same binary with its workers left to the kernel (`cpu_affinity: off`).
            peers["vigil, cpu_affinity: off"] = (18966, lambda: vigil_ready(
                18966, addrs, f"threads: {threads}\ncpu_affinity: off\n", None, "vigil-affinity-off"))
        if os.environ.get("PINGORA_PATH"):
            # The same binary with every request on Pingora's proxy (no FastPath).
            peers["vigil, Pingora's path"] = (18964, lambda: pingora_path(lambda: v(18964, None, "vigil-pingora")))
        # At 4 workers (on 2 cores) only the many-connection case is of interest.
        only = os.environ.get("CONNS")
        for c in ([int(only)] if only else conns if threads < 4 else conns[-1:]):
            results = interleaved(peers, rounds, seconds, conns=c, label=f"threads {threads} -c{c}",
                                  totals=backend_totals)
            med = lambda k, n: statistics.median(x[k] for x in results[n])
            print(f"\n### {threads} worker thread(s), wrk -t1 -c{c} "
                  f"({rounds} rounds of {seconds} s, medians; wrk and 3 backends on the same 2 cores)\n")
            print("| proxy | req/s | p99 ms | p99 range ms | CPU µs/request | ÷ HAProxy | p99 ÷ nginx | new backend conns / 1k req | errors | max steal % |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            hb = med("cpu_us_per_req", "haproxy")
            np99 = med("p99", "nginx")
            for n in peers:
                p99s = [x["p99"] for x in results[n]]
                print(f"| {n} | {med('rps', n):.0f} | {med('p99', n):.3f} | {min(p99s):.2f}–{max(p99s):.2f} | {med('cpu_us_per_req', n):.1f} | "
                      f"{med('cpu_us_per_req', n) / hb:.2f} | {med('p99', n) / np99:.2f} | {med('new_conns_per_1k', n):.2f} | "
                      f"{sum(x['errors'] for x in results[n])} | {max(x['steal'] for x in results[n]) * 100:.1f} |")
            sys.stdout.flush()


def bench_memory(count=8000):
    """Resident memory per idle keep-alive client connection, plain and over TLS (the
    same ECDSA P-256 certificate for every proxy; MEMORY=plain, tls or h2 runs one, h2
    being browser-like HTTP/2 clients over TLS; COUNT=n: n clients): `count`
    clients each send one request, read the answer and stay connected; RSS after minus
    RSS before. 8,000: the hard fd limit here is 20,000, HAProxy reserves two fds per
    `maxconn`, and vigil's descriptor budget at 20,000 is 8,716 client connections."""
    import resource
    import socket
    import ssl
    count = int(os.environ.get("COUNT", count))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count * 4 + 1000  # HAProxy asks for two per maxconn; peers inherit this limit
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))  # root may raise it
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    backends = [fleet(1, f"memory-backend{i}") for i in range(3)]
    addrs = [b[2][0] for b in backends]
    cert, key, both = bench_cert("mem")
    client_tls = ssl.create_default_context()
    client_tls.check_hostname = False
    client_tls.verify_mode = ssl.CERT_NONE

    def v(threads, tls):
        def run():
            listener = f"  - address: 127.0.0.1:18990\n    max_connections: {count * 2}\n"
            if tls:
                listener += f"    tls:\n      certificates:\n        - {{cert: {cert}, key: {key}}}\n"
            cfg = vigil_config("127.0.0.1:18990", "127.0.0.1:18991", pool_yaml("web", addrs),
                               f"threads: {threads}\n").replace("  - address: 127.0.0.1:18990\n", listener)
            p = vigil(cfg, f"vigil-{threads}")[0]
            wait_for("vigil ready", lambda: http("http://127.0.0.1:18991/health/ready")[0] == 200)
            return p
        return run

    def nginx(tls, h2=False):
        conf = nginx_conf("127.0.0.1:18990", addrs, connections=count)
        if tls:
            conf = conf.replace("listen 127.0.0.1:18990;", f"listen 127.0.0.1:18990 ssl{' http2' if h2 else ''};\n    "
                                f"ssl_certificate {cert};\n    ssl_certificate_key {key};")
        return start_nginx(conf)

    def haproxy(tls, h2=False):
        bind = "127.0.0.1:18990" + (f" ssl crt {both}" if tls else "") + (" alpn h2,http/1.1" if h2 else "")
        return start_haproxy(haproxy_conf(bind, addrs, maxconn=count + 50))

    request = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"
    kinds = [k for k in ("plain", "tls", "h2") if os.environ.get("MEMORY", k) == k]
    for kind in kinds:
        tls, h2 = kind in ("tls", "h2"), kind == "h2"
        peers = {
            "vigil threads: 1": v(1, tls),
            "vigil threads: 2": v(2, tls),
            "haproxy nbthread 1": lambda: haproxy(tls, h2),
            "nginx 1 worker": lambda: nginx(tls, h2),
        }
        rows = []
        scheme = "https" if tls else "http"
        for name, run in peers.items():
            p = run()
            wait_port("127.0.0.1:18990")
            wrk(f"{scheme}://127.0.0.1:18990/", 2)  # pools and caches warm
            time.sleep(1)
            before = rss_mib(p.pid)
            socks = []
            if h2:
                # Browser-like HTTP/2 clients (bench/src/bin/h2idle.rs): TLS, ALPN h2,
                # one GET answered on each connection, then quiet.
                idle = subprocess.Popen([os.path.join(TOOLS, "h2idle"), "127.0.0.1:18990", str(count)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                ready = idle.stdout.readline().split()
                time.sleep(2)
                after = rss_mib(p.pid)
                alive = int(ready[1]) if len(ready) == 2 else 0
                rows.append((name, before, after, (after - before) * 1024 / count, alive))
                log(f"{kind} {name}: {before:.1f} -> {after:.1f} MiB, {(after - before) * 1024 / count:.2f} KiB "
                    f"per connection, {alive} answered")
                idle.stdin.close()
                idle.wait()
                stop(p, signal.SIGINT if name.startswith("vigil") else signal.SIGTERM)
                time.sleep(1)
                continue
            for _ in range(count):
                s_ = socket.create_connection(("127.0.0.1", 18990))
                if tls:
                    s_ = client_tls.wrap_socket(s_, server_hostname="bench.test")
                s_.sendall(request)
                got = b""
                while b"\r\n\r\n" not in got:
                    chunk = s_.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                socks.append(s_)
            time.sleep(2)
            after = rss_mib(p.pid)
            alive = sum(1 for s_ in socks if s_.fileno() >= 0)
            rows.append((name, before, after, (after - before) * 1024 / count, alive))
            log(f"{kind} {name}: {before:.1f} -> {after:.1f} MiB, {(after - before) * 1024 / count:.2f} KiB per connection")
            for s_ in socks:
                s_.close()
            stop(p, signal.SIGINT if name.startswith("vigil") else signal.SIGTERM)
            time.sleep(1)
        title = "over TLS (rustls for vigil, OpenSSL for HAProxy and nginx)" if tls else "plain HTTP"
        if h2:
            title = "HTTP/2 over TLS (ALPN h2; rustls for vigil, OpenSSL for HAProxy and nginx)"
        print(f"\n### Memory per idle keep-alive client, {title} ({count} connections, each after one request)\n")
        print("| proxy | RSS before MiB | RSS with clients MiB | KiB per connection | connections answered |")
        print("|---|---|---|---|---|")
        for name, before, after, per, alive in rows:
            print(f"| {name} | {before:.1f} | {after:.1f} | {per:.2f} | {alive} |")
    for b in backends:
        stop(b[0])


def bench_checker(seconds=60, warmup=15, count=10000):
    half = count // 2
    f1, file1, a1 = fleet(half, "checker-fleet1")
    f2, file2, a2 = fleet(count - half, "checker-fleet2")
    addrs = a1 + a2
    # A long max_connection_age, as an operator of 10,000 backends would set it: the
    # default (60 s) would replace every connection once inside the measured minute.
    checks = ("    health_check:\n      interval: 1s\n      fast_interval: 1s\n      timeout: 1s\n"
              "      jitter: 0.1\n      max_connection_age: 10m\n")
    top = "threads: 1\nmetrics:\n  per_backend: false\nchecker:\n  max_concurrent_checks: 1024\n"
    cfg = vigil_config("127.0.0.1:18900", "127.0.0.1:18901", pool_yaml("big", addrs, checks), top)
    s0 = [fleet_stats(file1), fleet_stats(file2)]
    p, admin, _ = vigil(cfg)
    wait_for("every backend up", lambda: metrics(admin).get('vigil_pool_backends{pool="big",state="up"}') == count, 120)
    time.sleep(warmup)
    m0, c0, t0, fs0 = metrics(admin), cpu_seconds(p.pid), time.time(), [fleet_stats(file1), fleet_stats(file2)]
    time.sleep(seconds)
    m1, c1, t1, fs1 = metrics(admin), cpu_seconds(p.pid), time.time(), [fleet_stats(file1), fleet_stats(file2)]
    rss = rss_mib(p.pid)
    el = t1 - t0
    n = 'vigil_health_check_duration_seconds_count{pool="big"}'
    vchecks = (m1[n] - m0[n]) / el
    vconn_total = m1['vigil_health_check_connections_opened_total{pool="big"}']
    fleet_conns = sum(f["connections"] for f in fs1) - sum(f["connections"] for f in s0)
    lag99 = hist_quantile(m0, m1, "vigil_health_check_lag_seconds", 0.99)
    dur99 = hist_quantile(m0, m1, "vigil_health_check_duration_seconds", 0.99, 'pool="big",')
    vcpu = (c1 - c0) / el
    v = {"cpu": vcpu, "rss": rss, "checks": vchecks, "conn_per_backend": vconn_total / count,
         "fleet_conn_per_backend": fleet_conns / count, "lag99": lag99, "dur99": dur99,
         "cpu_us_per_check": vcpu / vchecks * 1e6}
    log(f"vigil: {v}")
    stop(p, signal.SIGINT)

    peers = {}
    for reuse in (() if os.environ.get("VIGIL_ONLY") else (True, False)):
        name = "pingora-lb" + (" (reuse_connection)" if reuse else " (default)")
        cmd = [os.path.join(TOOLS, "lb_peer"), file1, file2] + (["--reuse"] if reuse else [])
        s0 = [fleet_stats(file1), fleet_stats(file2)]
        q = start(cmd, "lb_peer")
        time.sleep(warmup)
        fs0, c0, t0 = [fleet_stats(file1), fleet_stats(file2)], cpu_seconds(q.pid), time.time()
        time.sleep(seconds)
        fs1, c1, t1 = [fleet_stats(file1), fleet_stats(file2)], cpu_seconds(q.pid), time.time()
        el = t1 - t0
        reqs = (sum(f["requests"] for f in fs1) - sum(f["requests"] for f in fs0)) / el
        conns = sum(f["connections"] for f in fs1) - sum(f["connections"] for f in s0)
        cpu = (c1 - c0) / el
        peers[name] = {"cpu": cpu, "rss": rss_mib(q.pid), "checks": reqs, "conn_per_backend": conns / count,
                       "cpu_us_per_check": cpu / max(reqs, 1) * 1e6}
        log(f"{name}: {peers[name]}")
        stop(q)
    print(f"\n### Checker scale: {count} backends, 1 s interval, {seconds} s measured after {warmup} s warm-up\n")
    print("| checker | CPU (share of one core) | RSS MiB | checks/s | CPU µs/check | connections opened per backend | lag p99 | check p99 |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| vigil | {v['cpu']:.3f} | {v['rss']:.0f} | {v['checks']:.0f} | {v['cpu_us_per_check']:.1f} | "
          f"{v['conn_per_backend']:.3f} (fleet saw {v['fleet_conn_per_backend']:.3f}) | ≤ {v['lag99']*1000:g} ms | ≤ {v['dur99']*1000:g} ms |")
    for name, r in peers.items():
        print(f"| {name} | {r['cpu']:.3f} | {r['rss']:.0f} | {r['checks']:.0f} | {r['cpu_us_per_check']:.1f} | "
              f"{r['conn_per_backend']:.3f} | n/a | n/a |")
    stop(f1)
    stop(f2)


def bench_death(seconds=12, kill_at=3):
    rows = []
    setups = [
        ("vigil (passive: 5 failures)", "vigil", ""),
        ("vigil (passive: 1 failure)", "vigil", "    passive:\n      consecutive_failures: 1\n"),
        ("haproxy check inter 1s fall 3 rise 2", "haproxy", ""),
        ("haproxy … + option redispatch, retries 3", "haproxy", "redispatch"),
        ("nginx max_fails=1 proxy_next_upstream error timeout", "nginx", ""),
    ]
    for n, (label, kind, extra) in enumerate(setups):
        backends = [fleet(1, f"death{n}-{kind}-{i}") for i in range(3)]
        addrs = [b[2][0] for b in backends]
        if kind == "vigil":
            checks = "    health_check:\n      interval: 1s\n      fast_interval: 250ms\n      timeout: 500ms\n      rise: 2\n      fall: 3\n"
            p, admin, _ = vigil(vigil_config("127.0.0.1:18700", "127.0.0.1:18701", pool_yaml("web", addrs, checks + extra)))
            wait_for("ready", lambda: http(f"http://{admin}/health/ready")[0] == 200)
            port = "127.0.0.1:18700"
        elif kind == "haproxy":
            bo = "  option httpchk GET /health\n"
            if extra == "redispatch":
                bo += "  option redispatch 1\n  retries 3\n"
            p = start_haproxy(haproxy_conf("127.0.0.1:18720", addrs, " check inter 1s fall 3 rise 2", bo), "haproxy-death")
            port = "127.0.0.1:18720"
        else:
            open(os.path.join(WORK, "nginx-error.log"), "w").close()
            p = start_nginx(nginx_conf("127.0.0.1:18710", addrs, " max_fails=1 fail_timeout=10s",
                                       "      proxy_next_upstream error timeout;\n"), "nginx-death")
            port = "127.0.0.1:18710"
        wait_port(port)
        time.sleep(1.5)
        killed_at = []
        def killer():
            time.sleep(kill_at)
            killed_at.append(time.time())
            backends[1][0].kill()
        import threading
        t = threading.Thread(target=killer)
        t.start()
        w = wrk(f"http://{port}/", seconds, conns=16)
        t.join()
        detect = "n/a"
        if kind == "vigil":
            logs = open(os.path.join(WORK, "vigil.log")).read()
            m = None
            for m in re.finditer(r"^(\S+Z).*(backend ejected|backend is down).*" + re.escape(addrs[1]), logs, re.M):
                break
            if m:
                ts = calendar.timegm(time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) + float("0." + m.group(1)[20:-1])
                detect = f"{(ts - killed_at[0]) * 1000:.0f} ms ({m.group(2)})"
            mm = metrics(admin)
            retried = int(mm.get('vigil_upstream_retries_total{pool="web"}', 0))
            detect += f"; {retried} retried attempts"
        elif kind == "haproxy":
            logs = open(os.path.join(WORK, "haproxy-death.log")).read()
            # RFC 5424 lines carry a timestamp with microseconds.
            m = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)([+-]\d\d:\d\d|Z)\S* .*Server pool/s1 is DOWN", logs)
            if m:
                ts = calendar.timegm(time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) + float("0." + m.group(1)[20:])
                if m.group(2) not in ("Z", "+00:00"):
                    sign = 1 if m.group(2)[0] == "+" else -1
                    ts -= sign * (int(m.group(2)[1:3]) * 3600 + int(m.group(2)[4:6]) * 60)
                detect = f"{(ts - killed_at[0]) * 1000:.0f} ms (marked DOWN by checks)"
            else:
                detect = "not marked down"
        else:
            lines = [l for l in open(os.path.join(WORK, "nginx-error.log")) if addrs[1] in l]
            detect = f"{len(lines)} failed attempts logged"
            if lines:
                # nginx's error log has 1-second resolution.
                last = calendar.timegm(time.strptime(lines[-1][:19], "%Y/%m/%d %H:%M:%S"))
                detect += f"; last within {max(0.0, last - killed_at[0]) + 1:.0f} s of the kill (1 s resolution); retried after fail_timeout 10s"
        rows.append((label, w["requests"], w["errors"], detect))
        log(label, w["requests"], w["errors"], detect)
        stop(p, signal.SIGINT if kind == "vigil" else signal.SIGTERM)
        for b in backends:
            stop(b[0])
        time.sleep(0.5)
    print(f"\n### Backend death under load (wrk -c16 for {seconds} s, one of three backends SIGKILLed at {kill_at} s)\n")
    print("| proxy | requests | failed requests | detection |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")


def open_loop(addr, rate, seconds, timeout=12.0):
    """An open-loop client: `rate` GETs a second for `seconds`, each on its own
    connection, whatever the answers take. Returns (latency s or None if failed)."""
    import asyncio
    host, port = addr.rsplit(":", 1)

    async def one():
        t = time.monotonic()
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
            w.write(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(r.read(), timeout)
            w.close()
            ok = data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200")
            return time.monotonic() - t if ok else None
        except Exception:
            return None

    async def run():
        tasks = []
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one()))
        return await asyncio.gather(*tasks)

    return asyncio.run(run())


def bench_frozen(seconds=14, freeze_at=3, frozen_for=8, rate=500):
    """One of three backends frozen (SIGSTOP) for 8 s under an open-loop 500 req/s
    client; read timeout 5 s everywhere, checks every 1 s with fall 3 (issue #11)."""
    rows = []
    checks = "    read_timeout: 5s\n    health_check:\n      interval: 1s\n      fast_interval: 250ms\n      timeout: 1s\n      rise: 2\n      fall: 3\n"
    setups = [
        ("vigil (stall detection, default)", "vigil", ""),
        ("vigil, stall_detection: false", "vigil", "    passive:\n      stall_detection: false\n"),
        ("haproxy defaults", "haproxy", ""),
        ("haproxy + redispatch, retry-on", "haproxy", "redispatch"),
        ("nginx max_fails=1, proxy_next_upstream timeout", "nginx", ""),
    ]
    for n, (label, kind, extra) in enumerate(setups):
        backends = [fleet(1, f"frozen{n}-{kind}-{i}") for i in range(3)]
        addrs = [b[2][0] for b in backends]
        if kind == "vigil":
            p, admin, _ = vigil(vigil_config("127.0.0.1:18750", "127.0.0.1:18751", pool_yaml("web", addrs, checks + extra)))
            wait_for("ready", lambda: http(f"http://{admin}/health/ready")[0] == 200)
            port = "127.0.0.1:18750"
        elif kind == "haproxy":
            bo = "  option httpchk GET /health\n  timeout server 5s\n"
            if extra == "redispatch":
                bo += "  option redispatch 1\n  retries 3\n  retry-on all-retryable-errors\n"
            p = start_haproxy(haproxy_conf("127.0.0.1:18760", addrs, " check inter 1s fall 3 rise 2", bo), "haproxy-frozen")
            port = "127.0.0.1:18760"
        else:
            p = start_nginx(nginx_conf("127.0.0.1:18770", addrs, " max_fails=1 fail_timeout=10s",
                                       "      proxy_read_timeout 5s;\n      proxy_next_upstream error timeout;\n"), "nginx-frozen")
            port = "127.0.0.1:18770"
        wait_port(port)
        time.sleep(1.5)
        frozen = backends[1][0]
        def freezer():
            time.sleep(freeze_at)
            frozen.send_signal(signal.SIGSTOP)
            time.sleep(frozen_for)
            frozen.send_signal(signal.SIGCONT)
        import threading
        t = threading.Thread(target=freezer)
        t.start()
        lat = open_loop(port, rate, seconds)
        t.join()
        failed = sum(1 for x in lat if x is None)
        delayed = sum(1 for x in lat if x is not None and x > 1.0)
        p99 = sorted(x for x in lat if x is not None)[int(0.99 * max(1, len(lat) - failed)) - 1]
        rows.append((label, len(lat), failed, delayed, p99))
        log(label, len(lat), failed, delayed, f"{p99 * 1000:.1f} ms")
        stop(p, signal.SIGINT if kind == "vigil" else signal.SIGTERM)
        for b in backends:
            stop(b[0])
        time.sleep(0.5)
    print(f"\n### A frozen backend (SIGSTOP for {frozen_for} s at {freeze_at} s; open loop {rate} req/s for {seconds} s; "
          f"read timeout 5 s, checks 1 s, fall 3; same 2 cores)\n")
    print("| proxy | requests | failed | answered after > 1 s | p99 ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4] * 1000:.1f} |")


def bench_slow(rounds=2, seconds=6):
    """Three backends, one ten times slower (50 ms vs 5 ms): latency of the pool under
    vigil's balancers beside nginx least_conn and HAProxy leastconn (issue #11)."""
    backends = [fleet(1, "slow-fast0", delay_ms=5), fleet(1, "slow-fast1", delay_ms=5),
                fleet(1, "slow-slow", delay_ms=50)]
    addrs = [b[2][0] for b in backends]
    def v(port, balance):
        cfg = vigil_config(f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}",
                           pool_yaml("web", addrs, f"    balance: {balance}\n"))
        p = vigil(cfg)[0]
        wait_for("vigil ready", lambda: http(f"http://127.0.0.1:{port + 1}/health/ready")[0] == 200)
        return p
    peers = {
        "vigil round_robin": (18950, lambda: v(18950, "round_robin")),
        "vigil least_requests": (18952, lambda: v(18952, "least_requests")),
        "vigil peak_ewma": (18954, lambda: v(18954, "peak_ewma")),
        "nginx least_conn": (18960, lambda: start_nginx(nginx_conf("127.0.0.1:18960", addrs).replace(
            "    keepalive 64;", "    least_conn;\n    keepalive 64;"))),
        "haproxy leastconn": (18970, lambda: start_haproxy(haproxy_conf("127.0.0.1:18970", addrs).replace(
            "  balance roundrobin", "  balance leastconn"))),
    }
    results = interleaved(peers, rounds, seconds, conns=16, label="slow backend")
    med = lambda k, n: statistics.median(x[k] for x in results[n])
    print(f"\n### One backend ten times slower (50 ms vs 5 ms; {rounds} rounds of {seconds} s, medians; "
          f"wrk -t1 -c16 on the same 2 cores)\n")
    print("| balancer | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|")
    for n in peers:
        print(f"| {n} | {med('rps', n):.0f} | {med('p50', n):.2f} | {med('p99', n):.2f} | "
              f"{sum(x['errors'] for x in results[n])} |")


def bench_reload(reloads=100, seconds=20):
    backends = [fleet(1, f"reload-backend{i}") for i in range(3)]
    addrs = [b[2][0] for b in backends]
    def cfg(i):
        body = "    backends:\n" + "".join(f"      - address: {a}\n        weight: {1 + (i + j) % 3}\n" for j, a in enumerate(addrs))
        return vigil_config("127.0.0.1:18600", "127.0.0.1:18601", f"  - name: web\n    balance: weighted_round_robin\n{body}")
    p, admin, path = vigil(cfg(0))
    wait_for("ready", lambda: http(f"http://{admin}/health/ready")[0] == 200)
    wrk("http://127.0.0.1:18600/", 3)
    base = wrk("http://127.0.0.1:18600/", seconds, conns=16)
    import threading
    done = []
    def reloader():
        time.sleep(1)
        for i in range(reloads):
            open(path, "w").write(cfg(i + 1))
            code, body = http(f"http://{admin}/admin/reload", data=b"")
            done.append(code)
            time.sleep((seconds - 3) / reloads)
    t = threading.Thread(target=reloader)
    t.start()
    during = wrk("http://127.0.0.1:18600/", seconds, conns=16)
    t.join()
    ok = sum(1 for c in done if c == 200)
    stop(p, signal.SIGINT)
    print(f"\n### Reload under load ({reloads} reloads over {seconds} s, wrk -c16)\n")
    print("| run | requests | failed requests | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    print(f"| no reloads | {base['requests']} | {base['errors']} | {base['p50']:.3f} | {base['p99']:.3f} |")
    print(f"| {ok}/{reloads} reloads | {during['requests']} | {during['errors']} | {during['p50']:.3f} | {during['p99']:.3f} |")


def bench_soak(minutes=10, count=1000):
    f, file, addrs = fleet(count, "soak-fleet", flap=5)
    checks = "    health_check:\n      interval: 1s\n      fast_interval: 500ms\n      timeout: 500ms\n"
    def cfg(i):
        # Alternate one backend in and out, and every weight, on each reload.
        use = addrs if i % 2 == 0 else addrs[:-1]
        body = "    backends:\n" + "".join(f"      - address: {a}\n        weight: {1 + (i % 3)}\n" for a in use)
        return vigil_config("127.0.0.1:18500", "127.0.0.1:18501", f"  - name: soak\n{body}{checks}")
    p, admin, path = vigil(cfg(0))
    wait_for("ready", lambda: http(f"http://{admin}/health/ready")[0] == 200, 60)
    def sample():
        _, body = http(f"http://{admin}/health/detailed", timeout=10)
        d = json.loads(body)["checker"]
        return {"t": time.time(), "backend_tasks": d["backend_tasks"], "runtime_tasks": d["runtime_tasks"],
                "fds": open_fds(p.pid), "rss": rss_mib(p.pid)}
    samples = [sample()]
    end = time.time() + minutes * 60
    i = 0
    failures = 0
    while time.time() < end:
        time.sleep(10)
        i += 1
        open(path, "w").write(cfg(i))
        code, _ = http(f"http://{admin}/admin/reload", data=b"", timeout=10)
        failures += code != 200
        if i % 6 == 0:
            samples.append(sample())
            log(samples[-1])
    samples.append(sample())
    m = metrics(admin)
    stop(p, signal.SIGINT)
    stop(f)
    print(f"\n### Soak: {minutes} min, {count} backends (one flapping every 5 s), a reload every 10 s ({i} reloads, {failures} failed)\n")
    print("| minute | backend tasks | runtime tasks | open fds | RSS MiB |")
    print("|---|---|---|---|---|")
    t0 = samples[0]["t"]
    for s in samples:
        print(f"| {(s['t'] - t0) / 60:.1f} | {s['backend_tasks']} | {s['runtime_tasks']} | {s['fds']} | {s['rss']:.1f} |")
    print(f"\nTransitions counted: {int(sum(v for k, v in m.items() if k.startswith('vigil_backend_transitions_total')))}")


def start_etcd(name="etcd"):
    client, peer = 18950, 18951
    d = os.path.join(WORK, name)
    p = start(["etcd", "--name=b", f"--data-dir={d}", f"--listen-client-urls=http://127.0.0.1:{client}",
               f"--advertise-client-urls=http://127.0.0.1:{client}", f"--listen-peer-urls=http://127.0.0.1:{peer}",
               f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}", f"--initial-cluster=b=http://127.0.0.1:{peer}",
               "--log-level=error"], name)
    wait_for("etcd healthy", lambda: '"health":"true"' in http(f"http://127.0.0.1:{client}/health")[1])
    return p, f"http://127.0.0.1:{client}"


def bench_fleet(count=1000, seconds=20, warmup=10):
    """Members x 1,000 backends at 1 s, with and without `fleet`: probes/s at the
    backends, CPU per member, and how long after a backend dies every member has it
    down (and the spread between the first and the last member)."""
    etcd, url = start_etcd()
    half = count // 2
    f1, file1, a1 = fleet(half, "fleet-backends1")
    f2, file2, a2 = fleet(count - half, "fleet-backends2")
    checks = ("    health_check:\n      interval: 1s\n      fast_interval: 1s\n      timeout: 1s\n"
              "      jitter: 0.1\n      max_connection_age: 10m\n")
    rows = []
    for members in (3, 5):
        for shared in (True, False):
            victim, vfile, va = fleet(1, f"victim-{members}-{shared}")
            addrs = a1 + a2 + va
            procs, admins = [], []
            for i in range(members):
                port = 19000 + 2 * i
                top = "threads: 1\nmetrics:\n  per_backend: false\n"
                if shared:
                    top += (f"fleet:\n  etcd: [\"{url}\"]\n  prefix: /bench-{members}\n  node: m{i}\n"
                            "  lease_ttl: 3s\n  copies: 1\n")
                cfg = vigil_config(f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}", pool_yaml("big", addrs, checks), top)
                p, admin, _ = vigil(cfg, f"member{i}")
                procs.append(p)
                admins.append(admin)
            for admin in admins:
                wait_for("every backend up", lambda: metrics(admin).get('vigil_pool_backends{pool="big",state="up"}') == count + 1, 120)
            if shared:
                wait_for("every member shared", lambda: all(metrics(a).get("vigil_fleet_mode") == 1 for a in admins), 30)
            time.sleep(warmup)
            e0 = cpu_seconds(etcd.pid)
            s0, c0, t0 = [fleet_stats(file1), fleet_stats(file2)], [cpu_seconds(p.pid) for p in procs], time.time()
            time.sleep(seconds)
            s1, c1, t1 = [fleet_stats(file1), fleet_stats(file2)], [cpu_seconds(p.pid) for p in procs], time.time()
            etcd_cpu = (cpu_seconds(etcd.pid) - e0) / (t1 - t0)
            el = t1 - t0
            probes = (sum(f["requests"] for f in s1) - sum(f["requests"] for f in s0)) / el
            cpu = [(b - a) / el for a, b in zip(c0, c1)]
            owned = [metrics(a).get("vigil_fleet_owned_backends", count + 1) for a in admins]
            # The victim dies: when does each member have it down?
            down = 'vigil_pool_backends{pool="big",state="down"}'
            killed = time.time()
            stop(victim, signal.SIGKILL)
            seen = {}
            while len(seen) < members and time.time() - killed < 30:
                for i, a in enumerate(admins):
                    if i not in seen and metrics(a).get(down, 0) >= 1:
                        seen[i] = time.time() - killed
                time.sleep(0.01)
            first, last = min(seen.values()), max(seen.values())
            row = {"members": members, "mode": "shared (copies 1)" if shared else "every member checks all",
                   "probes": probes, "cpu_med": statistics.median(cpu), "cpu_sum": sum(cpu),
                   "owned": owned, "first": first, "last": last, "etcd": etcd_cpu}
            log(row)
            rows.append(row)
            for p in procs:
                stop(p, signal.SIGINT)
    print(f"\n### Fleet: members x {count} backends at 1 s, {seconds} s measured after {warmup} s warm-up\n")
    print("| members | mode | probes/s at the backends | CPU per member (median, share of a core) | CPU of all members | etcd CPU | backends owned per member | backend killed -> first member has it down | -> last member |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        owned = "/".join(f"{o:.0f}" for o in r["owned"])
        print(f"| {r['members']} | {r['mode']} | {r['probes']:.0f} | {r['cpu_med']:.3f} | {r['cpu_sum']:.3f} | {r['etcd']:.3f} | {owned} | "
              f"{r['first']*1000:.0f} ms | {r['last']*1000:.0f} ms |")
    stop(f1)
    stop(f2)
    stop(etcd)


def user_sys_seconds(pid):
    """User and system CPU seconds of `pid` and its children."""
    u = s = 0
    for p in tree(pid):
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        u += int(f[11])
        s += int(f[12])
    return u / TICK, s / TICK


def bench_split(seconds=6):
    """vigil and HAProxy (http-reuse safe) at 1 and 2 workers, wrk -t1 -c32: user and
    system CPU per request from /proc, then system calls per request under strace -c
    (strace slows both alike, only the counts matter)."""
    backends = [fleet(1, f"split-backend{i}") for i in range(3)]
    addrs = [b[2][0] for b in backends]

    def start_peer(name, threads):
        if name == "vigil":
            return vigil_ready(18960, addrs, f"threads: {threads}\n"), 18960
        conf = haproxy_reuse_safe("127.0.0.1:18970", addrs, threads)
        p = start_haproxy(conf)
        wait_port("127.0.0.1:18970")
        return p, 18970

    print("\n| workers | proxy | req/s | user µs/request | system µs/request |")
    print("|---|---|---|---|---|")
    for threads in (1, 2):
        for name in ("vigil", "haproxy"):
            p, port = start_peer(name, threads)
            wrk(f"http://127.0.0.1:{port}/", 2)
            a = user_sys_seconds(p.pid)
            r = wrk(f"http://127.0.0.1:{port}/", seconds)
            b = user_sys_seconds(p.pid)
            n = r["requests"]
            print(f"| {threads} | {name} | {r['rps']:.0f} | {(b[0] - a[0]) / n * 1e6:.1f} | {(b[1] - a[1]) / n * 1e6:.1f} |")
            sys.stdout.flush()
            stop(p)
    print("\n| workers | proxy | requests | system calls per request (strace -c) |")
    print("|---|---|---|---|")
    for threads, name in ((1, "vigil"), (1, "haproxy"), (2, "vigil"), (2, "haproxy")):
        p, port = start_peer(name, threads)
        wrk(f"http://127.0.0.1:{port}/", 2)
        out = os.path.join(WORK, f"{name}.strace")
        tids = os.listdir(f"/proc/{p.pid}/task")
        st = subprocess.Popen(["strace", "-c", "-f", "-o", out] + sum((["-p", t] for t in tids), []),
                              stderr=subprocess.DEVNULL)
        time.sleep(1)
        r = wrk(f"http://127.0.0.1:{port}/", 4)
        st.send_signal(signal.SIGINT)
        st.wait()
        stop(p)
        calls = []
        for line in open(out):
            f = line.split()
            if len(f) >= 5 and f[0][0].isdigit() and f[-1] not in ("total",) and f[3].isdigit():
                per = int(f[3]) / r["requests"]
                if per >= 0.05:
                    calls.append(f"{f[-1]} {per:.2f}")
        print(f"| {threads} | {name} | {r['requests']} | {', '.join(calls)} |")
    for b in backends:
        stop(b[0])


def bench_sched(rounds=2, seconds=3):
    """Where two workers' tail latency comes from: `perf sched record -a` while wrk -t1
    -c32 runs against each proxy at 2 workers (vigil with and without cpu_affinity),
    then from `perf sched timehist`, per proxy: how often a worker that was ready to
    run waited over 1 ms for a CPU, the sum of those waits, and how often a worker ran
    right after its sibling (within 2 ms) on the same CPU, i.e. had queued behind it."""
    backends = [fleet(1, f"sched-backend{i}") for i in range(3)]
    addrs = [b[2][0] for b in backends]
    peers = {
        "vigil": (18960, "vigil proxy", lambda: vigil_ready(18960, addrs, "threads: 2\n")),
        "vigil, cpu_affinity: off": (18966, "vigil proxy", lambda: vigil_ready(
            18966, addrs, "threads: 2\ncpu_affinity: off\n", None, "vigil-affinity-off")),
        "haproxy": (18970, "haproxy", lambda: start_haproxy(haproxy_reuse_safe("127.0.0.1:18970", addrs, 2))),
        "nginx": (18980, "nginx", lambda: start_nginx(nginx_conf("127.0.0.1:18980", addrs, workers=2))),
    }
    line = re.compile(r"\s*([\d.]+)\s+\[(\d+)\]\s+(.+?)\[(\d+)(?:/\d+)?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")
    print("\n| proxy (2 workers, -c32) | p99 ms | worker waits over 1 ms, per s | ms waited in them, per s | "
          "worker runs after its sibling on the same CPU | max steal % |")
    print("|---|---|---|---|---|---|")
    for name, (port, comm, run) in peers.items():
        rows = []
        for r in range(rounds):
            p = run()
            wait_port(f"127.0.0.1:{port}")
            wrk(f"http://127.0.0.1:{port}/", 2)
            data = os.path.join(WORK, "sched.data")
            rec = subprocess.Popen(["perf", "sched", "record", "-a", "-o", data],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            s0 = cpu_stat()
            w = wrk(f"http://127.0.0.1:{port}/", seconds)
            st = steal_since(s0)
            rec.send_signal(signal.SIGINT)
            rec.wait()
            stop(p, signal.SIGINT if name.startswith("vigil") else signal.SIGTERM)
            out = subprocess.run(["perf", "sched", "timehist", "-i", data], capture_output=True, text=True).stdout
            runs, first, last = [], None, None
            for l in out.splitlines():
                m = line.match(l)
                if not m:
                    continue
                t = float(m.group(1))
                first, last = first or t, t
                if m.group(3).strip() == comm:
                    run_ms = float(m.group(7))
                    runs.append((t - run_ms / 1000, t, int(m.group(2)), m.group(4), float(m.group(6))))
            secs = max(last - first, 1e-9)
            waits = [x[4] for x in runs if x[4] > 1]
            # For each worker run, the sibling's last run before it: on the same CPU?
            same = total = 0
            ends = {}
            for start_t, end_t, cpu, tid, _ in sorted(runs):
                sib = max((e for k, e in ends.items() if k != tid), default=None)
                if sib and start_t - sib[0] < 0.002:
                    total += 1
                    same += sib[1] == cpu
                ends[tid] = (end_t, cpu)
            rows.append((w["p99"], len(waits) / secs, sum(waits) / secs, same / max(total, 1), st))
            log(f"sched {name} round {r}: p99 {w['p99']:.2f} ms waits>1ms {len(waits) / secs:.1f}/s "
                f"same CPU {same / max(total, 1):.2f} steal {st * 100:.1f}%")
            time.sleep(0.5)
        med = lambda i: statistics.median(x[i] for x in rows)
        print(f"| {name} | {med(0):.2f} | {med(1):.1f} | {med(2):.1f} | {med(3) * 100:.0f}% | "
              f"{max(x[4] for x in rows) * 100:.1f} |")
        sys.stdout.flush()
    for b in backends:
        stop(b[0])


def bench_ab(rounds=3, seconds=6):
    """Interleaved A/B of vigil builds: `harness.py ab NAME=PATH ...` (a name ending in
    `-nostall` runs with `passive.stall_detection: false`), HAProxy beside them
    (HAPROXY=0 leaves it out), at THREADS workers (default 2), wrk -t1 -cCONNS (32):
    user and system CPU µs per request from /proc, medians; runs with more than
    MAX_STEAL of the CPU stolen are measured again."""
    threads = int(os.environ.get("THREADS", "2"))
    conns = int(os.environ.get("CONNS", "32"))
    backends = [fleet(1, f"ab-backend{i}") for i in range(3)]
    addrs = [b[2][0] for b in backends]
    peers = {}
    for k, arg in enumerate(sys.argv[2:]):
        name, binary = arg.split("=", 1)
        port = 18960 + 2 * k
        extra = "    passive:\n      stall_detection: false\n" if name.endswith("-nostall") else ""
        cfg = vigil_config(f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}", pool_yaml("web", addrs, extra),
                           f"threads: {threads}\n")
        peers[name] = (port, lambda cfg=cfg, name=name, binary=binary: vigil(cfg, name, binary)[0])
    if os.environ.get("HAPROXY", "1") == "1":
        peers["haproxy"] = (18970, lambda: start_haproxy(haproxy_reuse_safe("127.0.0.1:18970", addrs, threads)))
    results = {n: [] for n in peers}
    for r in range(rounds):
        for name in (list(peers) if r % 2 == 0 else list(reversed(list(peers)))):
            port, run = peers[name]
            p = run()
            wait_port(f"127.0.0.1:{port}")
            url = f"http://127.0.0.1:{port}/"
            wrk(url, 2, conns=conns)
            for attempt in range(STEAL_TRIES):
                a, s0 = user_sys_seconds(p.pid), cpu_stat()
                w = wrk(url, seconds, conns=conns)
                b, st = user_sys_seconds(p.pid), steal_since(s0)
                if st <= MAX_STEAL:
                    break
            q = max(w["requests"], 1)
            x = ((b[0] - a[0]) / q * 1e6, (b[1] - a[1]) / q * 1e6, w["rps"], st)
            results[name].append(x)
            log(f"round {r} {name}: steal {st * 100:.1f}% user {x[0]:.1f} sys {x[1]:.1f} µs/req {x[2]:.0f} req/s")
            stop(p, signal.SIGTERM if name == "haproxy" else signal.SIGINT)
            time.sleep(0.5)
    print(f"\n| {threads} worker(s), -c{conns} | user µs/req | system µs/req | total | req/s | max steal % |")
    print("|---|---|---|---|---|---|")
    for name, xs in results.items():
        med = lambda i: statistics.median(x[i] for x in xs)
        print(f"| {name} | {med(0):.1f} | {med(1):.1f} | {statistics.median(x[0] + x[1] for x in xs):.1f} | "
              f"{med(2):.0f} | {max(x[3] for x in xs) * 100:.1f} |")
    for b in backends:
        stop(b[0])


def bench_shapes(rounds=3, seconds=6, conns=64):
    """Issue #25's traffic shapes at 1 and 2 workers: plain GET; GET with each proxy
    writing an access line per request to a file; POST of 1 KiB and of 1 MiB
    (VIGIL_BEFORE=path runs an older vigil build beside). vigil, HAProxy and
    nginx alike in the same run, interleaved; wrk -t1 -c64 and three backends on the
    same 2 cores."""
    backends = [fleet(1, f"shapes-backend{i}") for i in range(3)]
    addrs = [b[2][0] for b in backends]
    post = wrk_post_script(1024)
    post_mib = wrk_post_script(1048576)
    shapes = [("GET", False, ()), ("GET, access log on", True, ()), ("POST 1 KiB", False, ("-s", post)),
              ("POST 1 MiB", False, ("-s", post_mib))]
    only = os.environ.get("THREADS")
    # SHAPES=log keeps the shapes whose name contains "log" (ROUNDS=n: more rounds).
    shapes = [s for s in shapes if os.environ.get("SHAPES", "") in s[0]]
    rounds = int(os.environ.get("ROUNDS", rounds))
    for threads in ([int(t) for t in only.split(",")] if only else (1, 2)):
        for shape, logging, extra in shapes:
            vtop = f"threads: {threads}\n"
            hconf = haproxy_conf("127.0.0.1:18940", addrs, threads=threads)
            nlog = "off"
            if logging:
                vtop += f"access_log:\n  format: text\n  path: {WORK}/vigil-access.log\n"
                hconf = haproxy_access_log(hconf)
                nlog = f"{WORK}/nginx-access.log"
            peers = {
                "vigil": (18930, lambda: vigil_ready(18930, addrs, vtop)),
                "haproxy": (18940, lambda: start_haproxy(hconf, "haproxy-shapes")),
                "nginx": (18950, lambda: start_nginx(nginx_conf(
                    "127.0.0.1:18950", addrs, workers=threads, access_log=nlog,
                    extra_location=NGINX_STREAMED_BODIES),
                    "nginx-shapes")),
            }
            before = os.environ.get("VIGIL_BEFORE")
            if before:
                # An older vigil build beside (VIGIL_BEFORE=path), for an A/B in the run.
                peers["vigil before"] = (18960, lambda: vigil_ready(18960, addrs, vtop, before, "vigil-before"))
            dropped = []

            def before_stop(name):
                # vigil's access lines dropped by its writer, read as each run ends.
                if name == "vigil" and logging:
                    dropped.append(metrics("127.0.0.1:18931").get("vigil_access_log_dropped_total", 0))
            results = interleaved(peers, rounds, seconds, conns=conns, label=f"{shape} threads {threads}",
                                  extra=extra, before_stop=before_stop)
            med = lambda k, n: statistics.median(x[k] for x in results[n])
            print(f"\n### {shape}, {threads} worker(s) ({rounds} rounds of {seconds} s, medians; "
                  f"wrk -t1 -c{conns}, wrk and 3 backends on the same 2 cores)\n")
            print("| proxy | req/s | p99 ms | CPU µs/request | ÷ HAProxy CPU | p99 ÷ nginx | errors |")
            print("|---|---|---|---|---|---|---|")
            for n in peers:
                print(f"| {n} | {med('rps', n):.0f} | {med('p99', n):.3f} | {med('cpu_us_per_req', n):.1f} | "
                      f"{med('cpu_us_per_req', n) / med('cpu_us_per_req', 'haproxy'):.2f} | "
                      f"{med('p99', n) / med('p99', 'nginx'):.2f} | {sum(x['errors'] for x in results[n])} |")
            if "MiB" in shape:
                print("\nMB/s of request body: " + ", ".join(
                    f"{n} {med('rps', n) * 1.048576:.0f}" for n in peers))
            if logging:
                print(f"\nvigil_access_log_dropped_total at the end of each vigil run: {dropped}")
    for b in backends:
        stop(b[0])


def h2load(url, seconds, clients, streams, extra=()):
    """h2load -t1 for `seconds`: req/s, mean and p99 latency (ms, from its per-request
    log), requests done and failed."""
    logf = os.path.join(WORK, "h2load-requests.log")
    out = subprocess.run(["h2load", "-t1", "-c", str(clients), "-m", str(streams), "-D", str(seconds),
                          "--log-file", logf, *extra, url], capture_output=True, text=True).stdout
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                     out)
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
    lat = sorted(int(l.split("\t")[2]) for l in open(logf) if l.count("\t") >= 2 and not l.startswith("-"))
    return {"rps": rps, "requests": int(done.group(3)), "errors": int(done.group(4)) + int(done.group(5)),
            "mean": statistics.mean(lat) / 1000 if lat else float("nan"),
            "p99": lat[int(len(lat) * 0.99)] / 1000 if lat else float("nan")}


def tls_vigil(port, pool, top, cert, key, binary=None, name="vigil"):
    """vigil (or `binary`) with `pool` behind a TLS listener on `port` (admin on port + 1,
    config head `top`), once it says it is ready."""
    tls = f"    tls:\n      certificates:\n        - {{cert: {cert}, key: {key}}}\n"
    cfg = vigil_config(f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}", pool, top)
    cfg = cfg.replace(f"  - address: 127.0.0.1:{port}\n", f"  - address: 127.0.0.1:{port}\n{tls}", 1)
    p = vigil(cfg, name, binary)[0]
    wait_for("vigil ready", lambda: http(f"http://127.0.0.1:{port + 1}/health/ready")[0] == 200)
    return p


def grpc_backends(cert, key):
    """Three `grpc_backend`s over TLS (the message back with `grpc-status: 0` trailers):
    their processes and addresses, a `protocol: h2` pool of them, and h2load's arguments
    for a unary call with a 100-byte message."""
    addrs = [f"127.0.0.1:{19200 + i}" for i in range(3)]
    procs = []
    for i, addr in enumerate(addrs):
        procs.append(start([os.path.join(TOOLS, "grpc_backend"), addr, cert, key], f"grpc-backend{i}"))
        wait_port(addr)
    message = os.path.join(WORK, "grpc-message.bin")
    payload = bytes(range(100))
    open(message, "wb").write(b"\0" + len(payload).to_bytes(4, "big") + payload)
    pool = pool_yaml("grpc", addrs, "    protocol: h2\n    tls: {verify: false}\n    health_check:\n      type: tcp\n")
    extra = ("-d", message, "-H", "content-type: application/grpc", "-H", "te: trailers")
    return procs, addrs, pool, extra


def bench_h2(rounds=3, seconds=6):
    """Issue #26: HTTP/2 over TLS (ALPN h2) from h2load to vigil, HAProxy and nginx, each
    in front of the same three HTTP/1.1 backends, at 1 and 2 workers (THREADS=n: only
    n), with 16 connections x 10 streams and 1 x 100 (SHAPES=c16 or c1: only that one).
    CPU per request, req/s, mean and p99 latency; h2load and the backends on the same
    2 cores. VIGIL_BEFORE=path runs an older vigil build beside. H2_LOG=1: every proxy
    writes an access line per request to a file; H2_BODY=n: each request POSTs n bytes
    (h2load -d)."""
    rounds = int(os.environ.get("ROUNDS", rounds))
    logging = bool(os.environ.get("H2_LOG"))
    body = int(os.environ.get("H2_BODY", "0"))
    extra = ()
    if body:
        post = os.path.join(WORK, "h2-post.bin")
        open(post, "wb").write(b"x" * body)
        extra = ("-d", post, "-H", "content-type: application/octet-stream")
    what = (", access log on" if logging else "") + (f", POST {body} B" if body else "")
    backends = [fleet(1, f"h2-backend{i}") for i in range(3)]
    addrs = [b[2][0] for b in backends]
    cert, key, both = bench_cert("h2")
    only = os.environ.get("THREADS")
    shapes = [s for s in ((16, 10), (1, 100)) if os.environ.get("SHAPES", f"c{s[0]}") == f"c{s[0]}"]
    for threads in ([int(t) for t in only.split(",")] if only else (1, 2)):
        vtop = f"threads: {threads}\n"
        if logging:
            vtop += f"access_log:\n  format: text\n  path: {WORK}/vigil-h2-access.log\n"

        def v(port, binary=None, name="vigil"):
            return tls_vigil(port, pool_yaml("web", addrs), vtop, cert, key, binary, name)
        nginx = nginx_conf("127.0.0.1:19110", addrs, workers=threads,
                           access_log=f"{WORK}/nginx-h2-access.log" if logging else "off",
                           extra_location=NGINX_STREAMED_BODIES if body else "").replace(
            "listen 127.0.0.1:19110;",
            f"listen 127.0.0.1:19110 ssl http2;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n"
            # Not 1,000 requests a connection (nginx's default): h2load does not reconnect.
            "    keepalive_requests 100000000;")
        haproxy = haproxy_conf(f"127.0.0.1:19120 ssl crt {both} alpn h2,http/1.1", addrs, threads=threads)
        if logging:
            haproxy = haproxy_access_log(haproxy)
        peers = {
            "vigil": (19100, lambda: v(19100)),
            "haproxy": (19120, lambda: start_haproxy(haproxy, "haproxy-h2")),
            "nginx": (19110, lambda: start_nginx(nginx, "nginx-h2")),
        }
        before = os.environ.get("VIGIL_BEFORE")
        if before:
            peers["vigil before"] = (19130, lambda: v(19130, before, "vigil-before"))
        if os.environ.get("PINGORA_PATH"):
            # HTTP/2 as vigil carried it before it took the request loop (and as it
            # still does with VIGIL_FAST_PATH=off): Pingora's proxy.
            peers["vigil, Pingora's proxy"] = (19140, lambda: pingora_path(lambda: v(19140, name="vigil-pingora")))
        for clients, streams in shapes:
            results = interleaved(peers, rounds, seconds, label=f"h2 c{clients} m{streams} threads {threads}{what}",
                                  scheme="https",
                                  load=lambda url, s, c=clients, m=streams: h2load(url, s, c, m, extra))
            h2_table(results, peers, f"HTTP/2 over TLS{what}, h2load -c{clients} -m{streams}, {threads} worker(s) "
                     f"({rounds} rounds of {seconds} s, medians; h2load -t1 and 3 backends on the same 2 cores)")
    for b in backends:
        stop(b[0])


def bench_grpc(rounds=3, seconds=6):
    """Issue #26: gRPC unary calls (a 100-byte message; `h2load` posting a gRPC frame with
    `te: trailers`) over TLS to vigil (a `protocol: h2` pool), HAProxy (`proto h2` over
    TLS) and nginx (`grpc_pass grpcs://`), each in front of the same three gRPC
    backends over TLS (`grpc_backend`: the message back with `grpc-status: 0`
    trailers), at 1 and 2 workers (THREADS=n), 16 connections x 10 streams and 1 x 100
    (SHAPES=c16 or c1). h2load, the backends and the proxy share the 2 cores."""
    rounds = int(os.environ.get("ROUNDS", rounds))
    cert, key, both = bench_cert("grpc")
    backends, addrs, pool, extra = grpc_backends(cert, key)
    only = os.environ.get("THREADS")
    shapes = [s for s in ((16, 10), (1, 100)) if os.environ.get("SHAPES", f"c{s[0]}") == f"c{s[0]}"]
    load = lambda url, s, c, m: h2load(url + "echo.Echo/Say", s, c, m, extra=extra)
    for threads in ([int(t) for t in only.split(",")] if only else (1, 2)):
        def v(port, binary=None, name="vigil"):
            return tls_vigil(port, pool, f"threads: {threads}\n", cert, key, binary, name)
        nginx = nginx_conf("127.0.0.1:19210", addrs, workers=threads).replace(
            "listen 127.0.0.1:19210;",
            f"listen 127.0.0.1:19210 ssl http2;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n"
            "    keepalive_requests 100000000;").replace(
            "proxy_pass http://pool;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";",
            "grpc_pass grpcs://pool;\n      grpc_ssl_verify off;")
        haproxy = haproxy_conf(f"127.0.0.1:19220 ssl crt {both} alpn h2", addrs,
                               server_opts=" ssl verify none alpn h2", threads=threads)
        peers = {
            "vigil": (19230, lambda: v(19230)),
            "haproxy": (19220, lambda: start_haproxy(haproxy, "haproxy-grpc")),
            "nginx": (19210, lambda: start_nginx(nginx, "nginx-grpc")),
        }
        before = os.environ.get("VIGIL_BEFORE")
        if before:
            peers["vigil before"] = (19240, lambda: v(19240, before, "vigil-before"))
        for clients, streams in shapes:
            results = interleaved(peers, rounds, seconds, label=f"grpc c{clients} m{streams} threads {threads}",
                                  scheme="https", load=lambda url, s, c=clients, m=streams: load(url, s, c, m))
            h2_table(results, peers, f"gRPC unary over TLS, h2load -c{clients} -m{streams}, {threads} worker(s) "
                  f"({rounds} rounds of {seconds} s, medians; h2load -t1 and 3 gRPC backends on the same 2 cores)")
    for b in backends:
        stop(b)


def h2_table(results, peers, title):
    """The table `bench_h2` and `bench_grpc` print: medians, ratios to HAProxy's CPU and
    nginx's latency."""
    med = lambda k, n: statistics.median(x[k] for x in results[n])
    print(f"\n### {title}\n")
    print("| proxy | req/s | mean ms | p99 ms | CPU µs/request | ÷ HAProxy CPU | mean ÷ nginx | p99 ÷ nginx | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in peers:
        print(f"| {n} | {med('rps', n):.0f} | {med('mean', n):.3f} | {med('p99', n):.3f} | "
              f"{med('cpu_us_per_req', n):.1f} | "
              f"{med('cpu_us_per_req', n) / med('cpu_us_per_req', 'haproxy'):.2f} | "
              f"{med('mean', n) / med('mean', 'nginx'):.2f} | {med('p99', n) / med('p99', 'nginx'):.2f} | "
              f"{sum(x['errors'] for x in results[n])} |")


def chaos_schedule(seed, seconds, n):
    """A fixed random schedule of faults over `n` backends for `seconds`: kills,
    restarts on the same port, freezes (SIGSTOP for 1-5 s) and reloads that change
    weights and membership. At every moment at least one backend in the config is
    alive and not frozen. Returns [(t, kind, index, arg)], sorted by time."""
    import random
    rnd = random.Random(seed)
    dead, frozen, config = set(), {}, list(range(n))
    events, t = [], 3.0
    while t < seconds - 6:
        for i, until in list(frozen.items()):
            if until <= t:
                del frozen[i]
        serving = [i for i in config if i not in dead and i not in frozen]
        kinds = ["reload"]
        if len(serving) >= 2:
            kinds += ["kill", "kill", "freeze"]
        if dead:
            kinds += ["restart", "restart"]
        kind = rnd.choice(kinds)
        if kind == "kill":
            i = rnd.choice(serving)
            dead.add(i)
            events.append((t, "kill", i, None))
        elif kind == "restart":
            i = rnd.choice(sorted(dead))
            dead.discard(i)
            events.append((t, "restart", i, None))
        elif kind == "freeze":
            i = rnd.choice(serving)
            d = rnd.uniform(1, 5)
            frozen[i] = t + d
            events.append((t, "freeze", i, d))
        else:
            up = [i for i in range(n) if i not in dead and i not in frozen]
            keep = rnd.choice(up)
            members = sorted({keep} | {i for i in range(n) if rnd.random() < 0.7})
            config = members
            events.append((t, "reload", None, {i: rnd.randint(1, 5) for i in members}))
        t += rnd.uniform(1.0, 4.0)
    return events


def chaos_client(addr, clients, rate, seconds, timeout=15.0):
    """`clients` keep-alive clients, each sending `rate` GETs a second for `seconds`,
    spread over each second ([`keepalive_client`]). Returns [(start, end, status, error)] with
    times from time.monotonic()."""
    import http.client
    import threading
    host, port = addr.rsplit(":", 1)
    connect = lambda: http.client.HTTPConnection(host, int(port), timeout=timeout)
    results = []
    threads = [threading.Thread(target=keepalive_client, args=("chaos", connect, "GET", ["/"], None, rate, seconds,
                                                         results, k / clients / rate))
               for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r[2:] for r in results]


def three_steps(binary, clients=8, rate=25, seconds=16):
    """Issue #24's scenario: backends A and B; A killed (ejected, then down), restarted
    (up by its checks, still ejected), then B killed. Returns (requests after A's
    checks passed, of which failed, their statuses)."""
    import threading
    procs = [fleet(1, f"steps-{i}") for i in range(2)]
    addrs = [p[2][0] for p in procs]
    procs = [p[0] for p in procs]
    checks = ("    health_check:\n      interval: 500ms\n      fast_interval: 500ms\n      down_interval: 500ms\n"
              "      max_down_interval: 500ms\n      timeout: 500ms\n      rise: 2\n      fall: 2\n")
    p, admin, _ = vigil(vigil_config("127.0.0.1:18910", "127.0.0.1:18911", pool_yaml("web", addrs, checks), top=""),
                        "vigil-steps", binary)
    wait_for("ready", lambda: http(f"http://{admin}/health/ready")[0] == 200)

    def backend(i):
        d = json.loads(http(f"http://{admin}/health/detailed")[1])
        return next(b for b in d["pools"]["web"]["backends"] if b["address"] == addrs[i])

    passed = []

    def steps():
        time.sleep(2)
        procs[0].kill()
        procs[0].wait()
        wait_for("A ejected and down", lambda: backend(0)["ejected"] and backend(0)["health"] == "down")
        procs[0] = fleet_again("steps-0", addrs[0])
        wait_for("A up by its checks", lambda: backend(0)["health"] == "up")
        passed.append(time.monotonic())
        procs[1].kill()
        procs[1].wait()

    t = threading.Thread(target=steps)
    t.start()
    res = chaos_client("127.0.0.1:18910", clients, rate, seconds)
    t.join()
    after = [r for r in res if passed and r[0] >= passed[0]]
    failed = [r for r in after if r[2] != 200]
    stop(p, signal.SIGINT)
    for q in procs:
        stop(q)
    return len(after), len(failed), sorted({r[2] for r in failed})


def bench_chaos(seconds=90, seeds=(1, 2, 3), clients=8, rate=25):
    """Issue #24: three backends under kills, freezes, restarts and reloads for 90 s,
    8 keep-alive clients at 25 GETs/s each; checks every 500 ms, rise 2, fall 2,
    passive ejection on (defaults). Fixed schedules (seeds). A failure is explained
    when a backend was killed while the request was in flight."""
    binary = os.environ.get("VIGIL")
    steps = three_steps(binary)
    log("three steps", *steps)
    rows = []
    n = 3
    checks = ("    health_check:\n      interval: 500ms\n      fast_interval: 250ms\n      down_interval: 500ms\n"
              "      max_down_interval: 2s\n      timeout: 500ms\n      rise: 2\n      fall: 2\n")
    for seed in seeds:
        events = chaos_schedule(seed, seconds, n)
        procs = [fleet(1, f"chaos{seed}-{i}") for i in range(n)]
        addrs = [p[2][0] for p in procs]
        procs = [p[0] for p in procs]

        def cfg(members, weights=None):
            s = "  - name: web\n    backends:\n"
            for i in members:
                s += f"      - address: {addrs[i]}\n        weight: {(weights or {}).get(i, 1)}\n"
            return vigil_config("127.0.0.1:18900", "127.0.0.1:18901", s + checks, top="")

        p, admin, path = vigil(cfg(range(n)), f"vigil-chaos{seed}", binary)
        wait_for("ready", lambda: http(f"http://{admin}/health/ready")[0] == 200)
        kills = []
        import threading

        def run_events():
            t0 = time.monotonic()
            for t, kind, i, arg in events:
                delay = t0 + t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if kind == "kill":
                    kills.append(time.monotonic())
                    procs[i].kill()
                    procs[i].wait()
                elif kind == "restart":
                    procs[i] = fleet_again(f"chaos{seed}-{i}", addrs[i])
                elif kind == "freeze":
                    procs[i].send_signal(signal.SIGSTOP)
                    threading.Timer(arg, procs[i].send_signal, (signal.SIGCONT,)).start()
                else:
                    open(path, "w").write(cfg(sorted(arg), arg))
                    status, body = http(f"http://{admin}/admin/reload", data=b"")
                    if status != 200:
                        log("reload failed", status, body)

        t = threading.Thread(target=run_events)
        t.start()
        res = chaos_client("127.0.0.1:18900", clients, rate, seconds)
        t.join()
        failed = [r for r in res if r[2] != 200]
        unexplained = [r for r in failed if not any(r[0] - 0.01 <= k <= r[1] + 0.01 for k in kills)]
        m = metrics(admin)
        get = lambda k: int(m.get(k, 0))
        kinds = {k: sum(1 for e in events if e[1] == k) for k in ("kill", "restart", "freeze", "reload")}
        row = (seed, len(res), len(failed), 100.0 * len(failed) / max(1, len(res)), len(unexplained),
               "/".join(str(kinds[k]) for k in ("kill", "restart", "freeze", "reload")),
               get('vigil_pool_routing_held_out_total{pool="web"}'),
               get('vigil_upstream_fallback_attempts_total{kind="held_out",pool="web"}'),
               get('vigil_upstream_fallback_attempts_total{kind="fail_open",pool="web"}'),
               get('vigil_upstream_retries_total{pool="web"}'))
        rows.append(row)
        log("schedule", *row, "failures:", sorted({(r[2], r[3]) for r in failed}))
        stop(p, signal.SIGINT)
        for q in procs:
            if q.poll() is None:
                q.send_signal(signal.SIGCONT)
            stop(q)
        time.sleep(0.5)
    print(f"\n### An ejected backend that passes its checks, and the other one killed\n")
    print("A killed (ejected, then down), restarted (up by its checks, still ejected), then B killed; "
          f"{clients} keep-alive clients x {rate} GETs/s; checks 500 ms, rise 2, fall 2.\n")
    print("| requests after A's checks passed | failed | statuses |")
    print("|---|---|---|")
    print(f"| {steps[0]} | {steps[1]} | {', '.join(map(str, steps[2])) or '-'} |")
    print(f"\n### Chaos: three backends killed, frozen, restarted and reloaded for {seconds} s "
          f"({clients} keep-alive clients x {rate} GETs/s; checks 500 ms, rise 2, fall 2; passive defaults)\n")
    print("| schedule (seed) | requests | failed | failed % | failed with no kill in flight | kills/restarts/freezes/reloads "
          "| held-out episodes | held-out attempts | fail-open attempts | retries |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]} | {r[5]} | {r[6]} | {r[7]} | {r[8]} | {r[9]} |")


def start_dnsmasq(port, records):
    """dnsmasq on 127.0.0.1:port serving `records` [(name, ip)] for `.test`, once it answers."""
    binary = "/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else "dnsmasq"
    args = [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            "--no-poll", "--bind-interfaces", "--pid-file=", "--user=root", "--local=/test/",
            "--local-ttl=0", "--log-facility=/dev/null", "--listen-address=127.0.0.1", f"--port={port}"]
    args += [f"--host-record={n},{ip}" for n, ip in records]
    p = start(args, "dnsmasq")

    def up():
        import socket
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    wait_for("dnsmasq", up, 10)
    return p


def keepalive_client(name, connect, method, paths, body, rate, seconds, results, offset=0.0):
    """One client on keep-alive connections from `connect()`, `rate` requests a second
    for `seconds` on a fixed clock, the first `offset` seconds in (a late answer does not
    slow the next one down: they are due at fixed times). Appends (name, method, start,
    end, status, error)."""
    t0 = time.monotonic() + offset
    conn = None
    for j in range(int(rate * seconds)):
        delay = t0 + j / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        start_t = time.monotonic()
        status, error = 0, ""
        try:
            if conn is None:
                conn = connect()
            headers = {"Host": "app"}
            if body is not None:
                headers["Content-Type"] = "application/octet-stream"
            conn.request(method, paths[j % len(paths)], body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            status = r.status
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except Exception as e:
            error = type(e).__name__
            if conn is not None:
                conn.close()
            conn = None
        results.append((name, method, start_t, time.monotonic(), status, error))


def h2_bursts(name, url, seconds, results):
    """h2load bursts (40 requests, 2 connections x 4 streams) every 2 s for `seconds`.
    Appends (name, start, end, succeeded, failed)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        out = subprocess.run(["h2load", "-n", "40", "-c", "2", "-m", "4", url],
                             capture_output=True, text=True, timeout=60).stdout
        m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
        ok, bad = (int(m.group(1)), int(m.group(2)) + int(m.group(3))) if m else (0, 40)
        results.append((name, t, time.monotonic(), ok, bad))
        time.sleep(max(0.0, 2 - (time.monotonic() - t)))


def ws_client(name, addr, seconds, results):
    """A WebSocket through vigil, a message echoed every 0.5 s, opened again whenever it
    closes. Appends (name, kind, start, end, ok, error), kind "open" or "echo"."""
    import socket
    end = time.monotonic() + seconds
    sock = None
    while time.monotonic() < end:
        t = time.monotonic()
        kind = "open" if sock is None else "echo"
        try:
            if sock is None:
                sock = socket.create_connection(addr, timeout=10)
                sock.sendall(b"GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed before 101")
                    head += chunk
                if not head.startswith(b"HTTP/1.1 101"):
                    raise ConnectionError(head.split(b"\r\n")[0].decode(errors="replace"))
                results.append((name, "open", t, time.monotonic(), True, ""))
                kind = "echo"
            msg = os.urandom(16).hex().encode()
            sock.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("tunnel closed")
                got += chunk
            results.append((name, "echo", t, time.monotonic(), got == msg, ""))
        except Exception as e:
            results.append((name, kind, t, time.monotonic(), False, type(e).__name__))
            if sock is not None:
                sock.close()
            sock = None
        time.sleep(0.5)


def bench_chaos_soak(seconds=None, seed=7):
    """Issue #28's chaos soak: open-loop traffic (GET and POST with bodies, HTTP/1.1 and
    h2, plain and TLS) through two vigils sharing a fleet on etcd, while backends are
    killed, frozen and restarted (one always healthy per pool), both configs reloaded,
    DNS records change, etcd restarts and one vigil is upgraded in place. CHAOS_SECONDS
    (default 600; `make test` runs 60). Exits 1 when something was lost: an idempotent
    request that failed with no backend killed while it was in flight, a non-idempotent
    one that failed other than with a clean 502/503/504, a panic, or descriptors, tasks
    or memory that grew across the run."""
    import ssl
    import threading
    import http.client as hc
    seconds = int(os.environ.get("CHAOS_SECONDS", seconds or 600))
    etcd, url = start_etcd("chaos-etcd")
    crt, key = os.path.join(WORK, "chaos.crt"), os.path.join(WORK, "chaos.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=app", "-addext",
                    "subjectAltName=DNS:app"], check=True, capture_output=True)
    n = 3
    procs = [fleet(1, f"soakc-{i}") for i in range(n)]
    addrs = [p[2][0] for p in procs]
    procs = [p[0] for p in procs]
    # The discovered pool: two backends on one port, two loopback addresses.
    dport, dns_port = 18990, 18995
    dips = ["127.0.0.2", "127.0.0.3"]
    dprocs = [start([os.path.join(TOOLS, "fleet"), "--count", "1", "--out", os.path.join(WORK, f"soakd-{i}.txt"),
                     "--bind", f"{ip}:{dport}"], f"soakd-{i}") for i, ip in enumerate(dips)]
    dns_sets = [dips, dips[:1], dips, dips[1:]]  # always overlapping: a checked backend stays
    dns = [start_dnsmasq(dns_port, [("chaos.test", ip) for ip in dns_sets[0]])]
    checks = ("    health_check:\n      interval: 500ms\n      fast_interval: 250ms\n      down_interval: 500ms\n"
              "      max_down_interval: 2s\n      timeout: 500ms\n      rise: 2\n      fall: 2\n")
    members = {"a": (18970, 18971, 18972), "b": (18980, 18981, 18982)}

    def cfg(node, backends, weights=None):
        listen, admin, tls = members[node]
        web = "  - name: web\n    backends:\n" + "".join(
            f"      - address: {addrs[i]}\n        weight: {(weights or {}).get(i, 1)}\n" for i in backends) + checks
        disc = (f"  - name: dns\n    routes:\n      - path_prefix: /dns\n    discovery:\n      a: chaos.test:{dport}\n"
                f"      refresh: 1s\n" + checks)
        # Longer than any freeze (5 s): a request on a frozen backend outlives no drain.
        return (f"grace_period: 10s\nupgrade_socket: {WORK}/chaos-{node}.sock\n"
                f"listeners:\n  - address: 127.0.0.1:{listen}\n    http2: true\n"
                f"  - address: 127.0.0.1:{tls}\n    tls:\n      certificates:\n        - cert: {crt}\n          key: {key}\n"
                f"admin:\n  address: 127.0.0.1:{admin}\n"
                f"fleet:\n  etcd: [\"{url}\"]\n  prefix: /chaos\n  node: {node}\n"
                f"dns:\n  nameservers: [\"127.0.0.1:{dns_port}\"]\n"
                f"pools:\n{web}{disc}")

    vig, paths = {}, {}
    for node in members:
        vig[node], _, paths[node] = vigil(cfg(node, range(n)), f"vigil-soak-{node}")
        wait_for(f"{node} ready", lambda: http(f"http://127.0.0.1:{members[node][1]}/health/ready")[0] == 200)
    pids = {node: [vig[node].pid] for node in members}

    def sample(node):
        admin = f"127.0.0.1:{members[node][1]}"
        pid = pids[node][-1]
        _, body = http(f"http://{admin}/health/detailed", timeout=10)
        d = json.loads(body)["checker"]
        return {"t": time.monotonic(), "node": node, "pid": pid, "tasks": d["runtime_tasks"],
                "fds": open_fds(pid), "rss": rss_mib(pid)}

    samples = [sample(node) for node in members]
    every = 60 if seconds >= 300 else max(10, seconds // 4)
    events = chaos_schedule(seed, seconds, n)
    extra = [(seconds * f, "dns", None, k) for k, f in enumerate((0.15, 0.35, 0.55, 0.8), start=1)]
    extra += [(seconds * 0.4, "etcd", None, None), (seconds * 0.6, "upgrade", None, None)]
    events = sorted(events + extra, key=lambda e: e[0])
    kills, log_lines = [], []
    t0 = time.monotonic()

    def run_events():
        for t, kind, i, arg in events:
            delay = t0 + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if kind == "kill":
                kills.append(time.monotonic())
                procs[i].kill()
                procs[i].wait()
            elif kind == "restart":
                procs[i] = fleet_again(f"soakc-{i}", addrs[i])
            elif kind == "freeze":
                procs[i].send_signal(signal.SIGSTOP)
                threading.Timer(arg, procs[i].send_signal, (signal.SIGCONT,)).start()
            elif kind == "reload":
                for node in members:
                    open(paths[node], "w").write(cfg(node, sorted(arg), arg))
                    status, body = http(f"http://127.0.0.1:{members[node][1]}/admin/reload", data=b"", timeout=10)
                    if status != 200:
                        log_lines.append(f"reload of {node} failed: {status} {body}")
            elif kind == "dns":
                stop(dns[-1], signal.SIGKILL)
                dns.append(start_dnsmasq(dns_port, [("chaos.test", ip) for ip in dns_sets[arg % len(dns_sets)]]))
            elif kind == "etcd":
                stop(etcd[0] if isinstance(etcd, tuple) else etcd, signal.SIGKILL)
                time.sleep(3)
                restarted = start(["etcd", "--name=b", f"--data-dir={os.path.join(WORK, 'chaos-etcd')}",
                                   "--listen-client-urls=http://127.0.0.1:18950",
                                   "--advertise-client-urls=http://127.0.0.1:18950",
                                   "--listen-peer-urls=http://127.0.0.1:18951",
                                   "--initial-advertise-peer-urls=http://127.0.0.1:18951",
                                   "--initial-cluster=b=http://127.0.0.1:18951", "--log-level=error"], "chaos-etcd-2")
                wait_for("etcd back", lambda: '"health":"true"' in http("http://127.0.0.1:18950/health")[1])
                etcd_now.append(restarted)
            elif kind == "upgrade":
                # The new process takes the sockets and the health; the old one drains.
                new = start([os.path.join(BIN, "vigil"), "run", "-c", paths["b"], "--upgrade"], "vigil-soak-b-new")
                wait_for("upgrade done", lambda: vig["b"].poll() is not None, 30)
                pids["b"].append(new.pid)
                samples.append(sample("b"))

    def run_samples():
        k = 1
        while time.monotonic() < t0 + seconds:
            time.sleep(max(0.0, t0 + k * every - time.monotonic()))
            k += 1
            if time.monotonic() < t0 + seconds + 1:
                for node in members:
                    try:
                        samples.append(sample(node))
                    except Exception as e:
                        log_lines.append(f"sample of {node} failed: {e!r}")

    etcd_now = [etcd[0] if isinstance(etcd, tuple) else etcd]
    tls_ctx = ssl.create_default_context()
    tls_ctx.check_hostname = False
    tls_ctx.verify_mode = ssl.CERT_NONE
    results, h2 = [], []
    body = b"x" * 1024
    clients = []
    for node, (listen, _, tls) in members.items():
        plain = lambda listen=listen: hc.HTTPConnection("127.0.0.1", listen, timeout=15)
        secure = lambda tls=tls: hc.HTTPSConnection("127.0.0.1", tls, timeout=15, context=tls_ctx)
        clients += [(f"{node} GET", plain, "GET", ["/", "/dns/x"], None, 20) for _ in range(2)]
        clients += [(f"{node} GET tls", secure, "GET", ["/", "/dns/y"], None, 10)]
        clients += [(f"{node} POST", plain, "POST", ["/", "/dns/p"], body, 5)]
        clients += [(f"{node} POST tls", secure, "POST", ["/"], body, 5)]
    threads = [threading.Thread(target=keepalive_client, args=(c[0], c[1], c[2], c[3], c[4], c[5], seconds, results))
               for c in clients]
    threads += [threading.Thread(target=h2_bursts, args=("a h2 tls", "https://127.0.0.1:18972/", seconds, h2)),
                threading.Thread(target=h2_bursts, args=("b h2c", "http://127.0.0.1:18980/dns/h2", seconds, h2))]
    ws = []
    threads += [threading.Thread(target=ws_client, args=(f"{node} websocket", ("127.0.0.1", members[node][0]), seconds, ws))
                for node in members for _ in range(2)]
    threads += [threading.Thread(target=run_events), threading.Thread(target=run_samples)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for node in members:
        samples.append(sample(node))

    in_flight_kill = lambda a, b: any(a - 0.01 <= k <= b + 0.01 for k in kills)
    gets = [r for r in results if r[1] == "GET"]
    posts = [r for r in results if r[1] == "POST"]
    get_lost = [r for r in gets if r[4] != 200 and not in_flight_kill(r[2], r[3])]
    post_failed = [r for r in posts if r[4] != 200]
    post_unclean = [r for r in post_failed if r[4] not in (502, 503, 504)]
    h2_lost = [r for r in h2 if r[4] and not in_flight_kill(r[1], r[2])]
    # A tunnel ends with its backend or its vigil (killed, upgraded); opening one must not fail.
    ws_lost = [r for r in ws if r[1] == "open" and not r[4] and not in_flight_kill(r[2], r[3])]
    if os.environ.get("CHAOS_DEBUG"):
        for r in ws:
            if not r[4]:
                log("ws", r[0], r[1], f"{r[2] - t0:.2f}-{r[3] - t0:.2f}", r[5])
        log("events", [(round(t, 1), k, i) for t, k, i, _ in events])
    logs = ""
    for name in ("vigil-soak-a", "vigil-soak-b", "vigil-soak-b-new"):
        f = os.path.join(WORK, name + ".log")
        if os.path.exists(f):
            logs += open(f).read()
    panics = logs.count("panicked")
    kinds = {k: sum(1 for e in events if e[1] == k) for k in ("kill", "restart", "freeze", "reload", "dns", "etcd", "upgrade")}

    def growth(node):
        # The process alive at the end, from its first sample to its last.
        pid = pids[node][-1]
        mine = [s for s in samples if s["node"] == node and s["pid"] == pid]
        first, last = mine[0], mine[-1]
        return first, last

    flat = True
    print(f"\n### Chaos soak: {seconds} s, two vigils sharing a fleet on etcd (seed {seed})\n")
    print("Faults: " + ", ".join(f"{v} {k}" for k, v in kinds.items() if v) + ".\n")
    print("| traffic | requests | failed | failed with no kill in flight | statuses of failures |")
    print("|---|---|---|---|---|")
    for name in sorted({r[0] for r in results}):
        rs = [r for r in results if r[0] == name]
        bad = [r for r in rs if r[4] != 200]
        lost = [r for r in bad if not in_flight_kill(r[2], r[3])]
        print(f"| {name} | {len(rs)} | {len(bad)} | {len(lost)} | {', '.join(sorted({str(r[4] or r[5]) for r in bad})) or '-'} |")
    for name in sorted({r[0] for r in h2}):
        rs = [r for r in h2 if r[0] == name]
        print(f"| {name} (h2load bursts) | {sum(r[3] + r[4] for r in rs)} | {sum(r[4] for r in rs)} | "
              f"{sum(r[4] for r in rs if not in_flight_kill(r[1], r[2]))} | - |")
    for name in sorted({r[0] for r in ws}):
        rs = [r for r in ws if r[0] == name]
        opens = [r for r in rs if r[1] == "open"]
        echoes = [r for r in rs if r[1] == "echo"]
        print(f"| {name} (tunnels opened; echoes) | {len(opens)}; {len(echoes)} | "
              f"{sum(not r[4] for r in opens)} opens; {sum(not r[4] for r in echoes)} echoes (tunnel ended) | "
              f"{sum(1 for r in ws_lost if r[0] == name)} opens | "
              f"{', '.join(sorted({r[5] for r in rs if not r[4]})) or '-'} |")
    print("\n| vigil | pid | seconds in | runtime tasks | open fds | RSS MiB |")
    print("|---|---|---|---|---|---|")
    for s in samples:
        print(f"| {s['node']} | {s['pid']} | {s['t'] - t0:.0f} | {s['tasks']} | {s['fds']} | {s['rss']:.1f} |")
    for node in members:
        first, last = growth(node)
        grew = (last["fds"] > first["fds"] + 64 or last["tasks"] > first["tasks"] + 64
                or last["rss"] > first["rss"] * 1.5 + 16)
        if grew:
            flat = False
            log_lines.append(f"{node} grew: {first} -> {last}")
    upgrade_at = next((t for t, k, _, _ in events if k == "upgrade"), None)
    for r in get_lost + post_unclean:
        log_lines.append(f"lost: {r[0]} {r[1]} at {r[2] - t0:.2f} s ({r[4] or r[5]}; upgrade at {upgrade_at:.1f} s)")
    print(f"\nPanics in the logs: {panics}.")
    for line in log_lines:
        print(f"- {line}")
    stop(vig["a"], signal.SIGINT)
    for p in PROCS:
        if p.poll() is None and p.pid in pids["b"]:
            stop(p, signal.SIGINT)
    for q in procs + dprocs:
        if q.poll() is None:
            q.send_signal(signal.SIGCONT)
        stop(q)
    for d in dns:
        stop(d)
    for e in etcd_now:
        stop(e)
    ok = not get_lost and not post_unclean and not h2_lost and not ws_lost and panics == 0 and flat and not any(
        l.startswith("reload") for l in log_lines)
    print(f"\nVerdict: {'nothing lost' if ok else 'FAILED'} (idempotent lost {len(get_lost)}, "
          f"h2 lost {sum(r[4] for r in h2_lost)}, tunnels not opened {len(ws_lost)}, non-idempotent unclean "
          f"{len(post_unclean)}, panics {panics}, flat {flat}).")
    if not ok:
        raise SystemExit(1)


# ---------------------------------------------------------------- issue #30: overload, retry storms, uneven backends

def fleet_with(count, name, opts):
    """`fleet(count, name)` with more of fleet's options (`--limit`, `--service-ms`,
    `--fail-ratio`, `--fail-seed`, `--report-load`, ...)."""
    out = os.path.join(WORK, name + ".txt")
    for f in (out, out + ".stats"):
        if os.path.exists(f):
            os.remove(f)
    cmd = [os.path.join(TOOLS, "fleet"), "--count", str(count), "--out", out, *[str(o) for o in opts]]
    p = start(cmd, name)
    wait_for(f"{name} up", lambda: os.path.exists(out) and len(open(out).read().split()) == count)
    return p, out, open(out).read().split()


def fleet_backend_stats(file):
    """FILE.stats in full: {"total": {...}, "backends": [{"addr": ..., ...}]}, each with
    connections, requests, app_requests (not health checks), failed (5xx), peak_held
    (most requests inside at once, served or waiting) and peak_served."""
    for _ in range(100):
        try:
            lines = open(file + ".stats").read().splitlines()
        except OSError:
            lines = []
        if lines and "peak_served" in lines[0]:
            def fields(words):
                return {words[k]: int(words[k + 1]) for k in range(0, len(words) - 1, 2)}
            total = fields(lines[0].split())
            backends = []
            for line in lines[1:]:
                w = line.split()
                if w and w[0] == "backend":
                    backends.append({"addr": w[1], **fields(w[2:])})
            return {"total": total, "backends": backends}
        time.sleep(0.05)
    raise SystemExit(f"{file}.stats: unreadable (a fleet built before --limit?)")


def open_loop_status(addr, rate, seconds, timeout=5.0, path="/"):
    """An open-loop HTTP/1.1 client on keep-alive connections: request i is sent at
    start + i/rate whatever the earlier ones are doing (on an idle connection, or a new
    one when none is idle), each given `timeout` in all. Returns [(status, latency s, lag
    s)]: status an int, or "timeout", "closed" (the connection ended before a whole
    answer), "connect" (refused or failed) or "error"; latency from when it was sent;
    lag how late it was sent against its schedule (the generator falling behind)."""
    import asyncio
    host, port = addr.rsplit(":", 1)
    req = f"GET {path} HTTP/1.1\r\nHost: app\r\n\r\n".encode()

    async def answer(r):
        line = await r.readline()
        if not line:
            raise EOFError
        status = int(line.split()[1])
        length, chunked, close = 0, False, line.startswith(b"HTTP/1.0")
        while True:
            h = await r.readline()
            if not h:
                raise EOFError
            if h in (b"\r\n", b"\n"):
                break
            name, _, value = h.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
            elif name == b"connection":
                close = close or value == b"close"
        if chunked:
            while True:
                size = int((await r.readline()).split(b";")[0], 16)
                await r.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await r.readexactly(length)
        return status, close

    idle = []

    async def one(sched):
        t = time.monotonic()
        lag = t - sched
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                try:
                    conn = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
                except asyncio.TimeoutError:
                    return ("timeout", time.monotonic() - t, lag)
                except OSError:
                    return ("connect", time.monotonic() - t, lag)
            conn[1].write(req)
            status, close = await asyncio.wait_for(answer(conn[0]), max(0.001, timeout - (time.monotonic() - t)))
            took = time.monotonic() - t
            if close:
                conn[1].close()
            else:
                idle.append(conn)
            return (status, took, lag)
        except asyncio.TimeoutError:
            kind = "timeout"
        except (EOFError, asyncio.IncompleteReadError, ConnectionError):
            kind = "closed"
        except Exception:
            kind = "error"
        if conn is not None:
            conn[1].close()
        return (kind, time.monotonic() - t, lag)

    async def run():
        tasks = []
        begin = time.monotonic() + 0.05
        for i in range(int(rate * seconds)):
            sched = begin + i / rate
            delay = sched - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(sched)))
        out = await asyncio.gather(*tasks)
        for _, w in idle:
            w.close()
        return out

    return asyncio.run(run())


def quantile_ms(values, q):
    """Nearest-rank q-quantile of seconds, in ms (nan when empty)."""
    v = sorted(values)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, max(0, int(q * len(v) + 0.999999) - 1))] * 1000


def vigil_accepts(config, name):
    """Whether this vigil build validates `config` (`vigil validate`), and its first error."""
    path = os.path.join(WORK, name + "-validate.yaml")
    open(path, "w").write(config)
    r = subprocess.run([os.path.join(BIN, "vigil"), "validate", path], capture_output=True, text=True)
    return r.returncode == 0, (r.stderr.strip().splitlines() or [""])[0]


def metric_lines(before, after, words=("retr", "refused")):
    """Counters whose name has one of `words`, with their increase (nonzero only)."""
    out = []
    for k, v in sorted(after.items()):
        if any(w in k.split("{")[0] for w in words) and v - before.get(k, 0):
            out.append(f"{k} +{v - before.get(k, 0):g}")
    return out


def run_peer(kind, listen, addrs, vigil_extra="", haproxy_server="", haproxy_backend="", haproxy_balance=None,
             nginx_upstream="", nginx_upstream_head="", nginx_location="", threads=2, name="peer"):
    """Starts one proxy on `listen` in front of `addrs`, with `threads` workers, once it
    serves. Returns (process, admin address or None)."""
    if kind == "vigil":
        admin_port = int(listen.rsplit(":", 1)[1]) + 1
        admin = f"127.0.0.1:{admin_port}"
        cfg = vigil_config(listen, admin, pool_yaml("web", addrs, vigil_extra), f"threads: {threads}\n")
        p = vigil(cfg, name)[0]
        wait_for("vigil ready", lambda: http(f"http://{admin}/health/ready")[0] == 200)
        return p, admin
    if kind == "haproxy":
        conf = haproxy_conf(listen, addrs, haproxy_server, haproxy_backend, threads=threads)
        if haproxy_balance:
            conf = conf.replace("  balance roundrobin", f"  balance {haproxy_balance}")
        p = start_haproxy(conf, name)
    else:
        conf = nginx_conf(listen, addrs, nginx_upstream, nginx_location, workers=threads)
        conf = conf.replace("    keepalive 64;", f"{nginx_upstream_head}    keepalive 64;")
        p = start_nginx(conf, name)
    wait_port(listen)
    return p, None


def stop_peer(kind, p):
    stop(p, signal.SIGINT if kind == "vigil" else signal.SIGTERM)


def bench_overload(seconds=None, rate=1200, limit=8):
    """Issue #30: three backends that serve at most 8 requests at once (a request over
    that waits inside the backend), 20, 20 and 40 ms each (1,000 req/s in all), under an
    open-loop 1,200 req/s (1.2x capacity) for OVERLOAD_SECONDS (30). vigil with
    max_requests 8 and a queue (1,000, 1 s), HAProxy with maxconn 8 and timeout queue 1s,
    nginx with max_conns=8 (no queue: 502). Fresh backends for each proxy, so each
    backend's peak (requests held at once) is that proxy's."""
    seconds = seconds or int(os.environ.get("OVERLOAD_SECONDS", "30"))
    services = (20, 20, 40)
    capacity = sum(limit * 1000 / s for s in services)
    queue = f"    max_requests: {limit}\n    queue:\n      size: 1000\n      timeout: 1s\n"
    setups = [
        ("vigil least_requests", "vigil", dict(vigil_extra="    balance: least_requests\n" + queue)),
        ("vigil round_robin", "vigil", dict(vigil_extra="    balance: round_robin\n" + queue)),
        ("haproxy leastconn maxconn 8", "haproxy",
         dict(haproxy_server=f" maxconn {limit}", haproxy_backend="  timeout queue 1s\n", haproxy_balance="leastconn")),
        ("nginx least_conn max_conns=8", "nginx",
         dict(nginx_upstream=f" max_conns={limit}", nginx_upstream_head="    least_conn;\n    zone pool 64k;\n")),
    ]
    rows = []
    for n, (label, kind, opts) in enumerate(setups):
        backends = [fleet_with(1, f"overload{n}-b{i}", ["--limit", limit, "--service-ms", s])
                    for i, s in enumerate(services)]
        addrs = [b[2][0] for b in backends]
        listen = f"127.0.0.1:{19400 + 10 * n}"
        p, admin = run_peer(kind, listen, addrs, name=f"overload-{kind}{n}", **opts)
        open_loop_status(listen, 100, 1)  # warm-up at a tenth of capacity: connections opened
        time.sleep(1.2)
        s0 = [fleet_backend_stats(b[1])["backends"][0] for b in backends]
        m0 = metrics(admin) if admin else {}
        c0 = cpu_seconds(p.pid)
        res = open_loop_status(listen, rate, seconds)
        cpu = cpu_seconds(p.pid) - c0
        time.sleep(1.2)  # the stats files are rewritten every second
        s1 = [fleet_backend_stats(b[1])["backends"][0] for b in backends]
        m1 = metrics(admin) if admin else {}
        ok = [r[1] for r in res if r[0] == 200]
        refused = sum(1 for r in res if r[0] == 503)
        other = {}
        for r in res:
            if r[0] not in (200, 503):
                other[r[0]] = other.get(r[0], 0) + 1
        row = {
            "label": label, "sent": len(res), "ok": len(ok), "refused": refused, "other": other,
            "p50_ok": quantile_ms(ok, 0.5), "p99_ok": quantile_ms(ok, 0.99),
            "p50_all": quantile_ms([r[1] for r in res], 0.5), "p99_all": quantile_ms([r[1] for r in res], 0.99),
            "lag_p99": quantile_ms([r[2] for r in res], 0.99),
            "peak_held": max(s["peak_held"] for s in s1), "peak_served": max(s["peak_served"] for s in s1),
            "served": [b["app_requests"] - a["app_requests"] for a, b in zip(s0, s1)],
            "cpu_share": cpu / seconds, "metrics": metric_lines(m0, m1, ("refused",)) if admin else [],
        }
        if admin:
            waited = m1.get('vigil_pool_queue_wait_seconds_count{pool="web"}', 0) - m0.get(
                'vigil_pool_queue_wait_seconds_count{pool="web"}', 0)
            total = m1.get('vigil_pool_queue_wait_seconds_sum{pool="web"}', 0) - m0.get(
                'vigil_pool_queue_wait_seconds_sum{pool="web"}', 0)
            row["metrics"].append(f"queued {waited:g}, mean wait {total / max(waited, 1) * 1000:.0f} ms")
        rows.append(row)
        log(f"{label}: sent {row['sent']} ok {row['ok']} 503 {refused} other {other} "
            f"p99 ok {row['p99_ok']:.1f} ms peak held {row['peak_held']} served {row['served']} lag p99 {row['lag_p99']:.1f} ms")
        stop_peer(kind, p)
        for b in backends:
            stop(b[0])
        time.sleep(0.5)
    print(f"\n### Overload: 1.2x capacity against backends that queue inside (issue #30)\n")
    print(f"Three backends serving at most {limit} requests at once each (more wait inside the backend), "
          f"{services[0]}, {services[1]} and {services[2]} ms per request: capacity {capacity:.0f} req/s. "
          f"Open loop {rate} req/s for {seconds} s on keep-alive connections (timeout 5 s); each proxy with 2 "
          f"workers. The Python load generator, the backends and the proxy share the machine's 2 cores: "
          f"figures compare within this run. \"peak held\" is the most requests any backend held at once "
          f"(served + waiting inside it), from the backends' own counts.\n")
    print("| proxy | sent | 200 | 503 | other failures | p50 ms (200s) | p99 ms (200s) | p50 ms (all) | p99 ms (all) "
          "| peak held | peak served | served per backend (20/20/40 ms) | proxy CPU share | send lag p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        other = ", ".join(f"{k}: {v}" for k, v in sorted(r["other"].items(), key=str)) or "0"
        print(f"| {r['label']} | {r['sent']} | {r['ok']} | {r['refused']} | {other} | {r['p50_ok']:.1f} | "
              f"{r['p99_ok']:.1f} | {r['p50_all']:.1f} | {r['p99_all']:.1f} | {r['peak_held']} | {r['peak_served']} | "
              f"{' / '.join(map(str, r['served']))} | {r['cpu_share']:.2f} | {r['lag_p99']:.1f} |")
    for r in rows:
        if r["metrics"]:
            print(f"\n{r['label']} counters: " + "; ".join(f"`{m}`" for m in r["metrics"]))
    v = next(r for r in rows if r["label"] == "vigil least_requests")
    h = next(r for r in rows if r["label"].startswith("haproxy"))
    checks = [
        (f"no backend held more than {limit}", v["peak_held"] <= limit, f"peak {v['peak_held']}"),
        ("p99 (200s) at most HAProxy's", v["p99_ok"] <= h["p99_ok"], f"{v['p99_ok']:.1f} vs {h['p99_ok']:.1f} ms"),
        ("no failure but the queue's 503", not v["other"], str(v["other"] or "none")),
    ]
    print("\nvigil least_requests: " + "; ".join(f"{what}: {'yes' if ok else 'NO'} ({detail})"
                                              for what, ok, detail in checks))


def bench_retry_storm(seconds=None, rate=300, service_ms=None):
    """Issue #30: three backends that each fail half their requests (500, a seeded draw
    per request, the same draws for every proxy) and take RETRY_SERVICE_MS (50) per
    request, under an open-loop 300 req/s for RETRY_SECONDS (20). vigil retrying 500 up
    to 3 times with its retry budget (ratio 0.2, min 3) and with a budget too large to
    bite; HAProxy retries 3, redispatch on every retry, retry-on 500; nginx
    proxy_next_upstream http_500, 4 tries. Retries = requests the backends received -
    requests the clients sent."""
    seconds = seconds or int(os.environ.get("RETRY_SECONDS", "20"))
    service_ms = service_ms or int(os.environ.get("RETRY_SERVICE_MS", "50"))
    retry = "    retries: 3\n    retry_on_status: [500]\n"
    budgeted = retry + "    retry_budget:\n      ratio: 0.2\n      min: 3\n"
    unbudgeted = retry + "    retry_budget:\n      ratio: 1.0\n      min: 1000000\n"
    setups = []
    probe = lambda extra: vigil_accepts(vigil_config("127.0.0.1:1", "127.0.0.1:2", pool_yaml("web", ["127.0.0.1:3"], extra)),
                                        "retry-probe")
    ok_b, err_b = probe(budgeted)
    notes = []
    if ok_b:
        setups.append(("vigil retry_budget 0.2, min 3", "vigil", dict(vigil_extra=budgeted)))
        ok_u, err_u = probe(unbudgeted)
        if ok_u:
            setups.append(("vigil retry_budget 1.0, min 1000000 (no budget)", "vigil", dict(vigil_extra=unbudgeted)))
        else:
            notes.append(f"the unbudgeted config was refused: {err_u}")
    else:
        setups.append(("vigil retries 3, no retry_budget key (refused by this build)", "vigil", dict(vigil_extra=retry)))
        notes.append(f"this vigil refuses retry_budget ({err_b}): run without it")
    setups += [
        ("haproxy retries 3, redispatch 1, retry-on 500", "haproxy",
         dict(haproxy_backend="  retries 3\n  option redispatch 1\n  retry-on 500 conn-failure empty-response response-timeout\n")),
        ("nginx proxy_next_upstream http_500, tries 4", "nginx",
         dict(nginx_location="      proxy_next_upstream error timeout http_500;\n      proxy_next_upstream_tries 4;\n")),
        ("nginx … + max_fails=0 (no server marked failed)", "nginx",
         dict(nginx_upstream=" max_fails=0",
              nginx_location="      proxy_next_upstream error timeout http_500;\n      proxy_next_upstream_tries 4;\n")),
    ]
    rows = []
    for n, (label, kind, opts) in enumerate(setups):
        backends = [fleet_with(1, f"retry{n}-b{i}", ["--fail-ratio", "0.5", "--fail-seed", 1 + i, "--service-ms", service_ms])
                    for i in range(3)]
        addrs = [b[2][0] for b in backends]
        listen = f"127.0.0.1:{19450 + 5 * n}"
        p, admin = run_peer(kind, listen, addrs, name=f"retry-{kind}{n}", **opts)
        time.sleep(1.2)
        s0 = [fleet_backend_stats(b[1])["backends"][0] for b in backends]
        m0 = metrics(admin) if admin else {}
        res = open_loop_status(listen, rate, seconds)
        time.sleep(1.2)
        s1 = [fleet_backend_stats(b[1])["backends"][0] for b in backends]
        m1 = metrics(admin) if admin else {}
        received = sum(b["app_requests"] - a["app_requests"] for a, b in zip(s0, s1))
        failed_at_backends = sum(b["failed"] - a["failed"] for a, b in zip(s0, s1))
        lat = [r[1] for r in res]
        fails = {}
        for r in res:
            if r[0] != 200:
                fails[r[0]] = fails.get(r[0], 0) + 1
        row = {"label": label, "sent": len(res), "received": received, "retries": received - len(res),
               "backend_5xx": failed_at_backends, "fails": fails, "p50": quantile_ms(lat, 0.5),
               "p99": quantile_ms(lat, 0.99), "lag_p99": quantile_ms([r[2] for r in res], 0.99),
               "metrics": metric_lines(m0, m1, ("retr", "refused", "eject")) if admin else []}
        rows.append(row)
        log(f"{label}: sent {row['sent']} received {received} retries {row['retries']} failures {fails} "
            f"p99 {row['p99']:.1f} ms {row['metrics']}")
        stop_peer(kind, p)
        for b in backends:
            stop(b[0])
        time.sleep(0.5)
    print(f"\n### Retry storm: every backend fails half its requests (issue #30)\n")
    print(f"Three backends, each answering 500 to half its requests (a seeded draw per request, the same draws "
          f"for every proxy), {service_ms} ms per request; open loop {rate} req/s for {seconds} s on keep-alive "
          f"connections. Retries = requests the backends received - requests sent; with independent failures "
          f"and no budget, 3 retries on 3 backends cost 0.75 retries per request and leave 12.5% failing (4 "
          f"attempts: 0.875 and 6.25%). The load generator shares the 2 cores with the proxy and the backends.\n")
    for note in notes:
        print(f"Note: {note}.\n")
    print("| proxy | requests sent | received by backends | retries | retries / request | client failures "
          "| failure share | p50 ms | p99 ms | send lag p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        nf = sum(r["fails"].values())
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(r["fails"].items(), key=str)) or "0"
        print(f"| {r['label']} | {r['sent']} | {r['received']} | {r['retries']} | {r['retries'] / max(r['sent'], 1):.2f} "
              f"| {kinds} | {nf / max(r['sent'], 1):.1%} | {r['p50']:.1f} | {r['p99']:.1f} | {r['lag_p99']:.1f} |")
    for r in rows:
        if r["metrics"]:
            print(f"\n{r['label']} counters: " + "; ".join(f"`{m}`" for m in r["metrics"]))
        elif r["label"].startswith("vigil"):
            print(f"\n{r['label']} counters: no retry or refusal counter moved")


def bench_uneven(seconds=None, limit=16, share=0.8):
    """Issue #30: three backends of 16 places each, two at 20 ms per request and one at
    10 ms (twice as fast: half the capacity of 3,200 req/s), all reporting their load
    (`endpoint-load-metrics`), under an open loop at 80% of capacity for UNEVEN_SECONDS
    (20): the share of requests each of vigil's balancers sends to the fast one (50% is
    in proportion to capacity) and the latency. `balance: load_report` is skipped if this
    build refuses it. UNEVEN_BY=places: twice as fast by capacity instead (all at 20 ms,
    the fast one with twice the places)."""
    seconds = seconds or int(os.environ.get("UNEVEN_SECONDS", "20"))
    # UNEVEN_LIMIT places and service times UNEVEN_SLOWER times longer: the same
    # shape at a request rate that leaves the 2 cores to the proxies being compared.
    limit = int(os.environ.get("UNEVEN_LIMIT", limit))
    slower = int(os.environ.get("UNEVEN_SLOWER", "1"))
    services = tuple(s * slower for s in (20, 20, 10))
    limits = (limit, limit, limit)
    # UNEVEN_BY=places: twice as fast by capacity, not by service time (a machine with
    # twice the cores): the same service time everywhere, the fast backend with twice
    # the places. Answer times then do not tell the fast backend from the others until
    # one queues; its reported utilization does.
    by_places = os.environ.get("UNEVEN_BY") == "places"
    if by_places:
        services = (20 * slower,) * 3
        limits = (limit // 2, limit // 2, limit)
    capacity = sum(n * 1000 / s for n, s in zip(limits, services))
    rate = int(capacity * share)
    modes = ["round_robin", "least_requests", "peak_ewma", "load_report"]
    rows, notes = [], []
    for n, mode in enumerate(modes):
        extra = f"    balance: {mode}\n"
        if mode == "load_report":
            extra += "    load_report:\n      blackout: 1s\n"
        ok, err = vigil_accepts(vigil_config("127.0.0.1:1", "127.0.0.1:2", pool_yaml("web", ["127.0.0.1:3"], extra)),
                                "uneven-probe")
        if not ok:
            notes.append(f"balance: {mode} skipped: this vigil refuses it ({err})")
            continue
        backends = [fleet_with(1, f"uneven{n}-b{i}", ["--limit", places, "--service-ms", s, "--report-load"])
                    for i, (places, s) in enumerate(zip(limits, services))]
        addrs = [b[2][0] for b in backends]
        listen = f"127.0.0.1:{19480 + 4 * n}"
        p, admin = run_peer("vigil", listen, addrs, vigil_extra=extra, name=f"uneven-{mode}")
        # Warm-up: connections opened, and (load_report) reports past their blackout.
        open_loop_status(listen, rate // 4, 3)
        time.sleep(1.2)
        s0 = [fleet_backend_stats(b[1])["backends"][0] for b in backends]
        res = open_loop_status(listen, rate, seconds)
        time.sleep(1.2)
        s1 = [fleet_backend_stats(b[1])["backends"][0] for b in backends]
        m = metrics(admin)
        served = [b["app_requests"] - a["app_requests"] for a, b in zip(s0, s1)]
        ok_lat = [r[1] for r in res if r[0] == 200]
        lat = [r[1] for r in res]
        row = {"mode": mode, "sent": len(res), "ok": len(ok_lat), "fast": served[2] / max(sum(served), 1),
               "served": served, "p50": quantile_ms(lat, 0.5), "p99": quantile_ms(lat, 0.99),
               "peak": [b["peak_held"] for b in s1], "lag_p99": quantile_ms([r[2] for r in res], 0.99),
               "weights": []}
        if mode == "load_report":
            role = {a: f"{n}-place {s} ms" for a, n, s in zip(addrs, limits, services)}
            for k, v in sorted(m.items()):
                b = re.search(r'backend="([^"]+)"', k)
                if b and ("effective_weight" in k or "reported_utilization" in k):
                    row["weights"].append(f"{k.split('{')[0]} of the {role.get(b.group(1), b.group(1))} backend: {v:g}")
        rows.append(row)
        log(f"{mode}: fast share {row['fast']:.1%} served {served} p99 {row['p99']:.1f} ms peak {row['peak']}")
        stop_peer("vigil", p)
        for b in backends:
            stop(b[0])
        time.sleep(0.5)
    print(f"\n### Uneven backends that report their load (issue #30)\n")
    if by_places:
        shape = (f"Three backends at {services[0]} ms per request, two of {limits[0]} places and one of {limits[2]} "
                 f"(more wait inside)")
    else:
        shape = (f"Three backends of {limit} places each (more wait inside), two at {services[0]} ms per request "
                 f"and one at {services[2]} ms")
    print(f"{shape}: capacity {capacity:.0f} req/s, half of it the fast one's. Each answer carries "
          f"`endpoint-load-metrics` (utilization = the last second's average of requests held / its places). Open loop {rate} req/s "
          f"({share:.0%} of capacity) for {seconds} s; vigil with 2 workers and no max_requests. The load "
          f"generator shares the 2 cores with vigil and the backends.\n")
    for note in notes:
        print(f"Note: {note}.\n")
    print(f"| balance | sent | 200 | share to the fast backend | served ({'/'.join(f'{n}x{s} ms' for n, s in zip(limits, services))}) | peak held per backend "
          "| p50 ms | p99 ms | send lag p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['sent']} | {r['ok']} | {r['fast']:.1%} | {' / '.join(map(str, r['served']))} | "
              f"{' / '.join(map(str, r['peak']))} | {r['p50']:.1f} | {r['p99']:.1f} | {r['lag_p99']:.1f} |")
    for r in rows:
        if r["weights"]:
            print(f"\n{r['mode']}, at the end of the run: " + "; ".join(r["weights"]))
        elif r["mode"] == "load_report":
            print("\nload_report: this vigil exports no `vigil_backend_effective_weight` or "
                  "`vigil_backend_reported_utilization`: it may not act on the reports yet (then it balances "
                  "as weighted_round_robin, as round_robin here).")


if __name__ == "__main__":
    try:
        what = sys.argv[1] if len(sys.argv) > 1 else "proxy"
        {"proxy": bench_proxy, "checker": bench_checker, "death": bench_death,
         "reload": bench_reload, "soak": bench_soak, "edge": bench_edge,
         "threads": bench_threads, "memory": bench_memory, "tls": bench_tls, "frozen": bench_frozen, "slow": bench_slow,
         "fleet": bench_fleet, "split": bench_split, "ab": bench_ab,
         "sched": bench_sched, "chaos": bench_chaos, "shapes": bench_shapes, "h2": bench_h2, "grpc": bench_grpc,
         "chaos-soak": bench_chaos_soak, "overload": bench_overload, "retry-storm": bench_retry_storm,
         "uneven": bench_uneven}[what]()
        log(f"logs in {WORK}")
    finally:
        cleanup()
