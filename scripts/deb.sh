#!/bin/bash
# Builds the Debian packages vigil_VERSION_amd64.deb and vigil-dbgsym_VERSION_amd64.deb
# (its debug symbols, under /usr/lib/debug/.build-id/ as Debian ships them) with
# dpkg-deb from a staged root, out of the release binaries `make deb` builds first:
#
#   cargo build --release -p vigil-proxy --bin vigil --bin vigil-docs
#   scripts/deb.sh [OUTDIR]                                  # OUTDIR: [target/debian]
#
# What goes in, each overridable from the environment [default]:
#   VIGIL_BIN             the binary, installed stripped   [target/release/vigil]
#   VIGIL_DOCS_BIN        renders vigil(1) and completions [target/release/vigil-docs]
#   VIGIL_MAN5            vigil.yaml(5)                     [docs/man/vigil.yaml.5]
#   VIGIL_EXAMPLE_CONFIG  the conffile /etc/vigil/vigil.yaml [examples/vigil.yaml]
#   DEB_REVISION          Debian revision after the binary's version [1]
#   DEB_MAINTAINER        Maintainer field [the author of the repository's first commit]
#   SOURCE_DATE_EPOCH     file dates and the changelog's [HEAD's commit time]
# The packaging files (control, maintainer scripts, copyright, logrotate) are in
# scripts/deb/. Prints the paths of the two packages.

set -euo pipefail
umask 022
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
target=${CARGO_TARGET_DIR:-$root/target}
bin=${VIGIL_BIN:-$target/release/vigil}
docs_bin=${VIGIL_DOCS_BIN:-$target/release/vigil-docs}
man5=${VIGIL_MAN5:-$root/docs/man/vigil.yaml.5}
config=${VIGIL_EXAMPLE_CONFIG:-$root/examples/vigil.yaml}
out=${1:-$target/debian}

die() {
    echo "scripts/deb.sh: $*" >&2
    exit 1
}

for tool in dpkg-deb dpkg-shlibdeps objcopy strip readelf gzip md5sum cargo python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (make test-deps installs it)"
done
[ -x "$bin" ] || die "$bin is missing: cargo build --release -p vigil-proxy --bin vigil --bin vigil-docs (make deb does)"
[ -x "$docs_bin" ] || die "$docs_bin is missing: cargo build --release -p vigil-proxy --bin vigil-docs (make deb does)"
[ -f "$man5" ] || die "$man5 is missing: the config's man page vigil.yaml(5) (VIGIL_MAN5 names another file)"
[ -f "$config" ] || die "$config is missing: the example config installed as /etc/vigil/vigil.yaml (VIGIL_EXAMPLE_CONFIG names another file)"

work=$(mktemp -d)
# (The objcopy below may still run when a step fails.)
trap 'if [ -n "${split:-}" ]; then kill "$split" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
pkg=$work/vigil
dbg=$work/vigil-dbgsym
install -d -m 0755 "$pkg" "$dbg" "$work/gen"
# One snapshot of the binary for everything below, whatever cargo does meanwhile.
source_bin=$bin
cp "$bin" "$work/vigil.bin"
bin=$work/vigil.bin

# `vigil 0.1.0 (commit 92de754c0e90, TLS rustls 0.23 with ring)`
banner=$("$bin" --version)
upstream=$(sed -n 's/^vigil \([^ ]*\) .*/\1/p' <<<"$banner")
commit=$(sed -n 's/.*(commit \([^,)]*\).*/\1/p' <<<"$banner")
if [ -z "$upstream" ] || [ -z "$commit" ]; then
    die "cannot read the version from \`$source_bin --version\`: $banner"
fi
version=$upstream-${DEB_REVISION:-1}

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)
fi
if [ -z "${DEB_MAINTAINER:-}" ]; then
    first=$(git -C "$root" rev-list --max-parents=0 HEAD 2>/dev/null | tail -n 1 || true)
    DEB_MAINTAINER=$(git -C "$root" log -1 --format='%an <%ae>' "$first" 2>/dev/null || true)
    [ -n "$DEB_MAINTAINER" ] || die "no git history to take the maintainer from: set DEB_MAINTAINER"
fi

# Fills a template from scripts/deb/ with the fields known so far.
fill() {
    sed -e "s|@VERSION@|$version|g" -e "s|@MAINTAINER@|$DEB_MAINTAINER|g" \
        -e "s|@COMMIT@|$commit|g" -e "s|@DATE@|$(date -R -u -d "@$SOURCE_DATE_EPOCH")|g" \
        -e "s|@DEPENDS@|${depends:-}|g" -e "s|@INSTALLED_SIZE@|${size:-}|g" \
        -e "s|@BUILD_ID@|${build_id:-}|g" "$here/deb/$1"
}

# The binary stripped, its debug information apart, found by build id (as dh_strip does).
# Compressing the debug sections is the slow step (4 s): it runs while the rest is staged.
build_id=$(readelf -n "$bin" | sed -n 's/.*Build ID: \([0-9a-f]*\)$/\1/p')
[ -n "$build_id" ] || die "$source_bin has no build id (the linker's --build-id): its debug symbols could not be found"
debug=$dbg/usr/lib/debug/.build-id/${build_id:0:2}/${build_id:2}.debug
install -d "$pkg/usr/bin" "$(dirname "$debug")"
objcopy --only-keep-debug --compress-debug-sections "$bin" "$debug" &
split=$!
install -m 0755 "$bin" "$pkg/usr/bin/vigil"
strip --remove-section=.comment --remove-section=.note "$pkg/usr/bin/vigil"

# Configuration, service, log rotation.
install -D -m 0644 "$config" "$pkg/etc/vigil/vigil.yaml"
install -D -m 0644 "$root/docs/vigil.service" "$pkg/lib/systemd/system/vigil.service"
install -D -m 0644 "$here/deb/logrotate" "$pkg/etc/logrotate.d/vigil"

# Manual pages and completions, vigil(1) and the completions from the clap definitions.
"$docs_bin" "$work/gen" || die "$docs_bin could not write the man page and completions"
install -d "$pkg/usr/share/man/man1" "$pkg/usr/share/man/man5"
gzip -9n <"$work/gen/vigil.1" >"$pkg/usr/share/man/man1/vigil.1.gz"
gzip -9n <"$man5" >"$pkg/usr/share/man/man5/vigil.yaml.5.gz"
install -D -m 0644 "$work/gen/vigil.bash" "$pkg/usr/share/bash-completion/completions/vigil"
install -D -m 0644 "$work/gen/_vigil" "$pkg/usr/share/zsh/vendor-completions/_vigil"
install -D -m 0644 "$work/gen/vigil.fish" "$pkg/usr/share/fish/vendor_completions.d/vigil.fish"

# Documentation. contract.md stays uncompressed: the unit's Documentation= names it.
doc=$pkg/usr/share/doc/vigil
install -d "$doc"
crates=$(cd "$root" && cargo metadata --format-version 1 --filter-platform x86_64-unknown-linux-gnu |
    python3 "$here/deb/crates.py")
fill copyright | awk -v list="$crates" '$0 == "@CRATES@" { print list; next } { print }' >"$doc/copyright"
fill changelog | gzip -9n >"$doc/changelog.Debian.gz"
gzip -9n <"$root/README.md" >"$doc/README.md.gz"
install -m 0644 "$root/docs/contract.md" "$doc/contract.md"
# The generated key reference, the migration guide and the example configs the man
# pages and /etc/vigil/vigil.yaml point to.
gzip -9n <"$root/docs/reference.md" >"$doc/reference.md.gz"
gzip -9n <"$root/docs/migrating.md" >"$doc/migrating.md.gz"
install -d "$doc/examples"
for example in "$root"/examples/*; do
    install -m 0644 "$example" "$doc/examples/$(basename "$example")"
done
install -d "$dbg/usr/share/doc"
ln -s vigil "$dbg/usr/share/doc/vigil-dbgsym"
install -D -m 0644 "$here/deb/lintian-overrides" "$pkg/usr/share/lintian/overrides/vigil"

wait "$split" || die "objcopy could not keep $source_bin's debug information apart"
chmod 0644 "$debug"
objcopy --add-gnu-debuglink="$debug" "$pkg/usr/bin/vigil"

# Depends: what dpkg-shlibdeps finds the binary needs (it wants a debian/control).
install -d "$work/shlibs/debian"
printf 'Source: vigil\n\nPackage: vigil\nArchitecture: amd64\n' >"$work/shlibs/debian/control"
depends=$(cd "$work/shlibs" && dpkg-shlibdeps -O -e"$pkg/usr/bin/vigil" 2>"$work/shlibdeps.log") ||
    die "dpkg-shlibdeps failed: $(cat "$work/shlibdeps.log")"
depends=${depends#shlibs:Depends=}

# Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up; 1 per other entry.
installed_size() {
    find "$1" -mindepth 1 -path "$1/DEBIAN" -prune -o -printf '%y %s\n' |
        awk '{ n += ($1 == "f") ? int(($2 + 1023) / 1024) : 1 } END { print n }'
}

# Control files of one package; every file under /etc is a conffile, as debhelper has it.
control() {
    local dir=$1 template=$2 size
    size=$(installed_size "$dir")
    install -d "$dir/DEBIAN"
    fill "$template" >"$dir/DEBIAN/control"
    (cd "$dir" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
        sort -z | xargs -0r md5sum) >"$dir/DEBIAN/md5sums"
    if [ -d "$dir/etc" ]; then
        (cd "$dir" && find etc -type f -printf '/%p\n' | sort) >"$dir/DEBIAN/conffiles"
    fi
}
control "$pkg" control
control "$dbg" control-dbgsym
install -m 0755 "$here/deb/postinst" "$here/deb/prerm" "$here/deb/postrm" "$pkg/DEBIAN/"
find "$pkg" "$dbg" -newermt "@$SOURCE_DATE_EPOCH" -print0 |
    xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"

# xz -1: 6 MB in 2 s, where gzip -9 takes longer for 7 MB. The debug sections are
# compressed already: gzip -1 is as small as xz there, five times faster.
mkdir -p "$out"
rm -f "$out"/vigil_*_amd64.deb "$out"/vigil-dbgsym_*_amd64.deb
dpkg-deb --root-owner-group -Zxz -z1 --build "$pkg" "$out/vigil_${version}_amd64.deb" >/dev/null
dpkg-deb --root-owner-group -Zgzip -z1 --build "$dbg" "$out/vigil-dbgsym_${version}_amd64.deb" >/dev/null
echo "$out/vigil_${version}_amd64.deb"
echo "$out/vigil-dbgsym_${version}_amd64.deb"
