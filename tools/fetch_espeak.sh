#!/usr/bin/env bash
# Fetch espeak-ng from Debian's archive into a project-local folder, without installing it.
#
#   tools/fetch_espeak.sh DEST        e.g. tools/fetch_espeak.sh .venv/espeak
#
# The system's apt configuration is only read, never changed: a private deb822 sources file
# (same archive URI and release as the system's own Debian entry), a private lists dir and a
# private cache live in a temporary folder removed on exit. The .deb files are unpacked with
# `dpkg -x` into DEST, so DEST/usr/bin/espeak-ng runs with
#   LD_LIBRARY_PATH=DEST/usr/lib/<triplet>:DEST/usr/lib/<triplet>/pulseaudio
#   --path=DEST/usr/lib/<triplet>      (the folder that holds espeak-ng-data/)
# stamp_onnx.whisper does exactly that (the folder is $STAMP_ESPEAK, default .venv/espeak).
#
# Besides espeak-ng itself, libpcaudio0 links PulseAudio at load time (even when espeak-ng only
# writes a WAV file), and libpulse0 pulls libsndfile1 and its codecs: the Debian 12 base image
# lacks those, so they are fetched too. A final `ldd` check names any library still missing.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DEST   (e.g. $0 .venv/espeak)" >&2
    exit 2
fi
dest=$1

packages=(
    espeak-ng libespeak-ng1 espeak-ng-data libpcaudio0 libsonic0
    libpulse0 libasyncns0 libsndfile1
    libflac12 libogg0 libvorbis0a libvorbisenc2 libopus0 libmpg123-0 libmp3lame0
)

# shellcheck disable=SC1091
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [[ -z $codename ]]; then
    echo "fetch_espeak: no VERSION_CODENAME in /etc/os-release: not a Debian release?" >&2
    exit 1
fi
# The archive URI of the system's own Debian entry (deb822 first, then one-line sources).
uri=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [[ -z $uri ]]; then
    uri=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
uri=${uri:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/root"
cat >"$work/espeak.sources" <<EOF
Types: deb
URIs: $uri
Suites: $codename $codename-updates
Components: main
Signed-By: $keyring
EOF

apt_opts=(
    -o "Dir::Etc::SourceList=$work/espeak.sources"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache"
    -o "APT::Sandbox::User=root"
    -q
)
echo "fetch_espeak: $uri $codename: ${packages[*]}"
apt-get "${apt_opts[@]}" update >"$work/update.log" 2>&1 || {
    cat "$work/update.log" >&2
    exit 1
}
(cd "$work/debs" && apt-get "${apt_opts[@]}" download "${packages[@]}")
for deb in "$work"/debs/*.deb; do
    dpkg -x "$deb" "$work/root"
done

bin=$work/root/usr/bin/espeak-ng
data=$(dirname "$(find "$work/root/usr/lib" -maxdepth 3 -type d -name espeak-ng-data -print -quit)")
export LD_LIBRARY_PATH=$data:$data/pulseaudio
missing=$(ldd "$bin" | awk '/not found/ {print $1}' | tr '\n' ' ')
if [[ -n $missing ]]; then
    echo "fetch_espeak: espeak-ng still lacks: $missing(add their Debian packages to $0)" >&2
    exit 1
fi
"$bin" --path="$data" -v en-us -w "$work/check.wav" "testing"
test -s "$work/check.wav"

rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$work/root" "$dest"
echo "fetch_espeak: espeak-ng ready in $dest ($(du -sh "$dest" | cut -f1))"
