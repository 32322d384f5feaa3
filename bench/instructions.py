#!/usr/bin/env python3
"""Instructions per request for vigil binaries, counted by callgrind (deterministic,
unlike CPU time on this shared 2-core box): each binary serves 200 and then 1,200
keep-alive requests from one client to one backend at threads: 1, and the difference
of the two runs' totals over 1,000 is one request's share. BODY=1024 sends POSTs with
a body of that many bytes instead of GETs. H2=1: the client speaks HTTP/2 by prior
knowledge (h2c; `h2load -c1 -m10`), the backend HTTP/1.1. GRPC=1: gRPC unary calls
(h2c, `h2load -c1 -m10` posting a 100-byte message) to a `protocol: h2` pool of one
`grpc_backend` over TLS (the bench crate's; GRPC_BACKEND=path, default
$VIGIL_TOOLS/grpc_backend, VIGIL_TOOLS=target/release unless set: `make test` builds it
in target/testing). M=100 sends HTTP/2 and gRPC requests 100 at a time instead of 10. KEEP=1 keeps the callgrind output files
(/tmp/cg.out.1200*) for callgrind_annotate.

Usage: python3 bench/instructions.py BINARY...
"""
import subprocess, sys, time, socket, os, threading, http.server, glob, re
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("content-length","2"); self.end_headers(); self.wfile.write(b"ok")
    def do_POST(self):
        n=int(self.headers.get("content-length","0")); self.rfile.read(n)
        self.send_response(200); self.send_header("content-length","2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self,*a): pass
srv=http.server.ThreadingHTTPServer(("127.0.0.1",0),H); port=srv.server_address[1]
threading.Thread(target=srv.serve_forever,daemon=True).start()
cfg=f"threads: 1\nlisteners:\n  - address: 127.0.0.1:19981\nadmin:\n  address: 127.0.0.1:19982\npools:\n  - name: web\n    health_check:\n      interval: 60s\n    backends:\n      - address: 127.0.0.1:{port}\n"
h2 = os.environ.get("H2") or os.environ.get("GRPC")
grpc = os.environ.get("GRPC")
if grpc:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", "/tmp/cg-grpc.key", "-out", "/tmp/cg-grpc.pem", "-days", "7",
                    "-subj", "/CN=bench.test", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    backend = subprocess.Popen([os.environ.get("GRPC_BACKEND", os.path.join(os.environ.get("VIGIL_TOOLS", "target/release"), "grpc_backend")),
                                "127.0.0.1:0", "/tmp/cg-grpc.pem", "/tmp/cg-grpc.key"],
                               stdout=subprocess.PIPE, text=True)
    grpc_addr = backend.stdout.readline().split()[1]
    cfg = cfg.replace(f"      - address: 127.0.0.1:{port}\n", f"      - address: {grpc_addr}\n")
    cfg = cfg.replace("    health_check:\n", "    protocol: h2\n    tls: {verify: false}\n    health_check:\n      type: tcp\n")
    payload = bytes(range(100))
    open("/tmp/cg-grpc.bin", "wb").write(b"\0" + len(payload).to_bytes(4, "big") + payload)
if h2:
    cfg = cfg.replace("  - address: 127.0.0.1:19981\n", "  - address: 127.0.0.1:19981\n    http2: true\n")
open("/tmp/cg.yaml","w").write(cfg)
body = os.environ.get("BODY")
def load(n):
    if h2:
        extra = ["-d", "/tmp/cg-grpc.bin", "-H", "content-type: application/grpc",
                 "-H", "te: trailers"] if grpc else []
        url = "http://127.0.0.1:19981/" + ("echo.Echo/Say" if grpc else "")
        subprocess.run(["h2load", "-n", str(n), "-c", "1", "-m", os.environ.get("M", "10"), *extra, url],
                       check=True, capture_output=True)
        return
    s=socket.create_connection(("127.0.0.1",19981))
    if body:
        req=(f"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: {int(body)}\r\n\r\n").encode()+b"a"*int(body)
    else:
        req=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(n):
        s.sendall(req)
        got=b""
        while not got.endswith(b"ok"):
            got+=s.recv(4096)
    s.close()
def run(binary, n):
    out=f"/tmp/cg.out.{n}"
    for f in glob.glob(out+"*"): os.remove(f)
    p=subprocess.Popen(["valgrind","--tool=callgrind",f"--callgrind-out-file={out}",binary,"run","-c","/tmp/cg.yaml"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1",19981)).close(); break
        except OSError: time.sleep(0.2)
    time.sleep(2)
    load(50)
    load(n)
    p.terminate(); p.wait()
    total=0
    for f in glob.glob(out+"*"):
        for line in open(f):
            m=re.match(r"summary: (\d+)", line) or re.match(r"totals: (\d+)", line)
            if m: total+=int(m.group(1)); break
        if not os.environ.get("KEEP"):
            os.remove(f)
    return total
for binary in sys.argv[1:]:
    a=run(binary, 200); b=run(binary, 1200)
    print(binary, f"{(b-a)/1000:.0f} instructions/request")
if grpc:
    backend.terminate()
