#!/usr/bin/env bash
# Build free-threaded CPython 3.13 ("3.13t", GIL disabled) into $PREFIX, from Debian's source
# package (see design.md section 6). Idempotent: does nothing when a working build is there.
# The machines reach Debian's archive but not python.org, hence the deb-src route.
set -euo pipefail

PREFIX="${DUALMODE_PY313T_PREFIX:-/opt/python3.13t}"
PY="$PREFIX/bin/python3.13t"

if [ -x "$PY" ] && "$PY" -c 'import sys, ssl, sqlite3, ctypes; assert not sys._is_gil_enabled()' 2>/dev/null; then
    echo "free-threaded CPython already at $PY"
    exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Build dependencies (the usual CPython set; most are already on the image).
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    dpkg-dev xz-utils build-essential pkg-config libssl-dev zlib1g-dev libffi-dev \
    libbz2-dev libsqlite3-dev liblzma-dev libreadline-dev uuid-dev >/dev/null

SRC_LIST=/etc/apt/sources.list.d/dualmode-python-src.sources
if [ ! -f "$SRC_LIST" ]; then
    $SUDO tee "$SRC_LIST" >/dev/null <<'SOURCES'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    $SUDO apt-get update -qq
fi

WORK="$(mktemp -d /tmp/py313t-build.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
apt-get source --download-only python3.13 >/dev/null
tar -xf python3.13_*.orig.tar.xz
cd Python-3.13*/
./configure --disable-gil --prefix="$PREFIX" --with-ensurepip=install >/dev/null
make -j"$(nproc)" >/dev/null 2>&1 || make -j"$(nproc)"
$SUDO make install >/dev/null 2>&1

"$PY" -c 'import sys, ssl, sqlite3, ctypes; assert not sys._is_gil_enabled(); print("built", sys.version)'
