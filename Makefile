# vigil — the two commands a newcomer needs are `make run` and `make test`.
# Both install what they need first (Debian; run as root or with sudo).

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get
VIGIL := target/release/vigil

.PHONY: all deps deb-deps test-deps bench-deps pgo-deps build run deb test fuzz bench soak chaos pgo lint fmt

all: build

# Pingora's zlib-ng (flate2) is built with cmake; etcd-client's protocol with protoc, which
# needs protobuf's own .proto files (libprotobuf-dev, only recommended by protobuf-compiler).
deps:
	@missing=""; command -v cmake >/dev/null 2>&1 || missing="$$missing cmake"; \
	command -v protoc >/dev/null 2>&1 || missing="$$missing protobuf-compiler"; \
	[ -f /usr/include/google/protobuf/descriptor.proto ] || missing="$$missing libprotobuf-dev"; \
	[ -z "$$missing" ] || { $(APT) update -qq && $(APT) install -y -qq --no-install-recommends $$missing; }

# What scripts/deb.sh builds the package with: dpkg-shlibdeps (dpkg-dev) for Depends,
# objcopy and strip (binutils) to keep the debug symbols apart.
deb-deps: deps
	@missing=""; command -v dpkg-shlibdeps >/dev/null 2>&1 || missing="$$missing dpkg-dev"; \
	command -v objcopy >/dev/null 2>&1 || missing="$$missing binutils"; \
	[ -z "$$missing" ] || { $(APT) update -qq && $(APT) install -y -qq --no-install-recommends $$missing; }

# Tools the tests use as peers or checkers: promtool (package prometheus), openssl
# (test certificates), dnsmasq (DNS discovery), etcd (the fleet), lintian and logrotate
# (tests/tests/package.rs checks the Debian package with them).
test-deps: deps deb-deps
	@missing=""; command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v lintian >/dev/null 2>&1 || missing="$$missing lintian"; \
	command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || missing="$$missing logrotate"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing="$$missing dnsmasq-base"; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v h2load >/dev/null 2>&1 || missing="$$missing nghttp2-client"; \
	[ -z "$$missing" ] || { $(APT) update -qq && $(APT) install -y -qq --no-install-recommends $$missing; }

# Benchmarks measure vigil beside nginx and HAProxy, with wrk as the client; `harness.py
# fleet` runs etcd, `harness.py split` strace, `harness.py sched` perf (package linux-perf).
bench-deps: deps
	@missing=""; for t in nginx haproxy wrk strace; do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v perf >/dev/null 2>&1 || missing="$$missing linux-perf"; \
	[ -z "$$missing" ] || { $(APT) update -qq && $(APT) install -y -qq --no-install-recommends $$missing; }

# llvm-profdata of the LLVM rustc is built on (`make pgo` merges the recorded profile
# with it): Debian's llvm-NN package of that major version.
LLVM_MAJOR := $(shell rustc -vV 2>/dev/null | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
pgo-deps: bench-deps test-deps
	@command -v llvm-profdata-$(LLVM_MAJOR) >/dev/null 2>&1 || { $(APT) update -qq && $(APT) install -y -qq --no-install-recommends llvm-$(LLVM_MAJOR); }

build: deps
	$(CARGO) build --release --workspace --bins

# Only the binary it starts (the release profile's whole-program step is taken per binary).
run: deps
	$(CARGO) build --release -p vigil-proxy --bin vigil
	$(VIGIL) demo

# The Debian package, target/debian/vigil_VERSION_amd64.deb, and its debug symbols beside
# it, vigil-dbgsym_VERSION_amd64.deb (scripts/deb.sh; about 10 s after the build).
deb: deb-deps
	$(CARGO) build --release -p vigil-proxy --bin vigil --bin vigil-docs
	scripts/deb.sh

# The binaries operators get (release: whole-program optimised), which the end-to-end
# tests start and package; then the helpers the chaos soak starts (fleet, grpc_backend)
# and the tests with the `testing` profile (release's optimisation without that step,
# taken once per test binary otherwise).
test: test-deps
	$(CARGO) build --release -p vigil-proxy --bin vigil --bin vigil-docs
	$(CARGO) build --profile testing -p vigil-bench --bins
	$(CARGO) test --profile testing --workspace
	VIGIL_TOOLS=target/testing CHAOS_SECONDS=60 python3 bench/harness.py chaos-soak

# Issue #28's chaos soak, ten minutes: two vigils on etcd, every fault at once, traffic of
# every kind; exits 1 if anything was lost or grew (`make test` runs one minute of it).
chaos: test-deps
	$(CARGO) build --release -p vigil-proxy --bin vigil
	$(CARGO) build --profile testing -p vigil-bench --bins
	VIGIL_TOOLS=target/testing CHAOS_SECONDS=600 python3 bench/harness.py chaos-soak

# The fuzz tests (proptest) with many more cases than make test runs: a few minutes.
fuzz: deps
	PROPTEST_CASES=$${PROPTEST_CASES:-200000} $(CARGO) test --profile testing -p vigil-proxy fuzz
	PROPTEST_CASES=$${PROPTEST_CASES:-200000} $(CARGO) test --profile testing -p vigil-conf --test fuzz
	PROPTEST_CASES=$${PROPTEST_CASES:-200000} $(CARGO) test --profile testing -p vigil-healthcheck fuzz

# Results go to bench/RESULTS.md by hand, beside the command that produced them.
bench: bench-deps build
	$(CARGO) build --release -p vigil-bench --bins
	$(CARGO) bench -p vigil-bench
	python3 bench/harness.py proxy
	python3 bench/harness.py checker
	python3 bench/harness.py death
	python3 bench/harness.py reload
	python3 bench/harness.py edge
	python3 bench/harness.py threads
	python3 bench/harness.py memory
	python3 bench/harness.py tls
	python3 bench/harness.py frozen
	python3 bench/harness.py slow
	python3 bench/harness.py fleet
	python3 bench/harness.py split
	python3 bench/harness.py sched
	python3 bench/harness.py chaos
	python3 bench/harness.py shapes

# Ten minutes: task count, fds and memory must stay flat.
soak: bench-deps build
	$(CARGO) build --release -p vigil-bench --bins
	python3 bench/harness.py soak

# Records the profile every build is optimised with (pgo/vigil.profdata, applied by
# scripts/rustc-pgo): an instrumented vigil (its own target directory) serves
# bench/pgo_train.py's traffic for about a minute and what it wrote is merged. cargo does
# not see a new profile as a change, so the release build is then done again from clean.
# About 15 minutes; run it after changes to the request path, and commit the profile.
pgo: pgo-deps
	$(CARGO) build --profile testing -p vigil-bench --bins
	RUSTFLAGS="-Cprofile-generate=$(CURDIR)/target/pgo/profiles" CARGO_TARGET_DIR=target/pgo \
		$(CARGO) build --release -p vigil-proxy --bin vigil
	rm -rf target/pgo/profiles
	VIGIL_TOOLS=target/testing python3 bench/pgo_train.py target/pgo/release/vigil
	llvm-profdata-$(LLVM_MAJOR) merge -o pgo/vigil.profdata target/pgo/profiles
	$(CARGO) clean --release
	$(CARGO) build --release -p vigil-proxy --bin vigil --bin vigil-docs

lint: deps
	$(CARGO) fmt --all -- --check
	python3 scripts/import_cycles.py proxy/src healthcheck/src conf/src alloc/src
	python3 scripts/unit_sizes.py proxy/src healthcheck/src conf/src alloc/src
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
