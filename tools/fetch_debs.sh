#!/usr/bin/env bash
# Download Debian packages of any suite and unpack them into a folder, without installing them.
#
#   tools/fetch_debs.sh SUITE DEST PACKAGE...
#       e.g. tools/fetch_debs.sh trixie .venv/ort-headers libonnxruntime-dev
#
# The system's apt configuration is only read, never changed: apt runs with a private deb822
# sources file (the archive URI of the system's own Debian entry, suites SUITE and
# SUITE-updates, component main, Debian's archive keyring), a private lists dir and a private
# cache, all in a temporary folder removed on exit. Only the named packages are downloaded (no
# dependency resolution); each .deb is unpacked with `dpkg -x` into DEST (created if needed;
# files already there are kept or overwritten, never removed).
set -euo pipefail

if [[ $# -lt 3 ]]; then
    echo "usage: $0 SUITE DEST PACKAGE...   (e.g. $0 trixie .venv/ort-headers libonnxruntime-dev)" >&2
    exit 2
fi
suite=$1
dest=$2
shift 2
packages=("$@")

# The archive URI of the system's own Debian entry (deb822 first, then one-line sources).
uri=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [[ -z $uri ]]; then
    uri=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
uri=${uri:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

# Development suites have no -updates companion.
suites=$suite
case $suite in
    sid | unstable | experimental | rc-buggy) ;;
    *) suites="$suite $suite-updates" ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
cat >"$work/private.sources" <<EOF
Types: deb
URIs: $uri
Suites: $suites
Components: main
Signed-By: $keyring
EOF

apt_opts=(
    -o "Dir::Etc::SourceList=$work/private.sources"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache"
    -o "APT::Sandbox::User=root"
    -q
)
echo "fetch_debs: $uri $suites: ${packages[*]}"
apt-get "${apt_opts[@]}" update >"$work/update.log" 2>&1 || {
    cat "$work/update.log" >&2
    exit 1
}
(cd "$work/debs" && apt-get "${apt_opts[@]}" download "${packages[@]}")
mkdir -p "$dest"
for deb in "$work"/debs/*.deb; do
    dpkg -x "$deb" "$dest"
done
