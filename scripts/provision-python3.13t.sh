#!/usr/bin/env bash
# Build free-threaded CPython 3.13 ("3.13t", GIL disabled) into $PREFIX, from Debian's source
# package. Idempotent: does nothing when a working build is there.
#
# Needs a Debian-family system (apt) and root or sudo. Elsewhere, put any free-threaded
# CPython 3.13 on PATH as `python3.13t` (or at $PREFIX/bin/python3.13t) and skip this script;
# the noxfile looks in both places (docs/development.md).
#
# The machines reach Debian's archive but not python.org, hence the deb-src route. The archive's
# address is never written here: it is read from the machine's own apt configuration (the `deb`
# entry that serves this release's Debian packages), through apt's own parser.
#
#   scripts/provision-python3.13t.sh                  build (or find) $PREFIX/bin/python3.13t
#   scripts/provision-python3.13t.sh --print-archive  print the archive it would use, and exit
set -euo pipefail

PREFIX="${DUALMODE_PY313T_PREFIX:-/opt/python3.13t}"
PY="$PREFIX/bin/python3.13t"
SUITE="${DUALMODE_PY313T_SUITE:-trixie}"
OS_RELEASE="${DUALMODE_OS_RELEASE:-/etc/os-release}"

# The archive that serves this machine's Debian packages: apt's configured `deb` target whose
# release is this system's codename (not -security, not -updates).
debian_archive() {
    local codename
    codename="$(. "$OS_RELEASE" && echo "${VERSION_CODENAME:-}")"
    apt-get indextargets --format '$(TARGET_OF) $(RELEASE) $(REPO_URI)' 2>/dev/null |
        awk -v codename="$codename" '
            $1 == "deb" && $2 == codename && found == "" { found = $3 }
            $1 == "deb" && $2 !~ /-/ && fallback == "" { fallback = $3 }
            END { print (found != "" ? found : fallback) }'
}

if [ "${1:-}" = "--print-archive" ]; then
    debian_archive
    exit 0
fi

if [ -x "$PY" ] && "$PY" -c 'import sys, ssl, sqlite3, ctypes; assert not sys._is_gil_enabled()' 2>/dev/null; then
    echo "free-threaded CPython already at $PY"
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "error: this script needs a Debian-family system (apt-get not found)." >&2
    echo "Install any free-threaded CPython 3.13 as python3.13t on PATH instead." >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "error: this script needs root or sudo (it runs apt-get and installs into $PREFIX)." >&2
        exit 1
    fi
    SUDO="sudo"
fi

SRC_LIST=/etc/apt/sources.list.d/dualmode-python-src.sources
if [ ! -f "$SRC_LIST" ]; then
    ARCHIVE="$(debian_archive)"
    if [ -z "$ARCHIVE" ]; then
        echo "error: no Debian 'deb' entry found in this machine's apt sources" >&2
        echo "(apt-get indextargets lists none); add one, or install python3.13t yourself." >&2
        exit 1
    fi
    echo "deb-src for $SUITE from the configured Debian archive: $ARCHIVE"
    $SUDO tee "$SRC_LIST" >/dev/null <<SOURCES
Types: deb-src
URIs: $ARCHIVE
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi

# Build dependencies (the usual CPython set; most are already on the image).
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    dpkg-dev xz-utils build-essential pkg-config libssl-dev zlib1g-dev libffi-dev \
    libbz2-dev libsqlite3-dev liblzma-dev libreadline-dev uuid-dev >/dev/null

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
