#!/usr/bin/env bash
# Fetch espeak-ng from Debian's archive into a project-local folder, without installing it.
#
#   tools/fetch_espeak.sh DEST        e.g. tools/fetch_espeak.sh .venv/espeak
#
# The download and unpacking (private apt configuration, no system change) is
# tools/fetch_debs.sh, run on the system's own Debian release. The packages are unpacked into a
# temporary folder that replaces DEST only once espeak-ng has passed its checks, so
# DEST/usr/bin/espeak-ng runs with
#   LD_LIBRARY_PATH=DEST/usr/lib/<triplet>:DEST/usr/lib/<triplet>/pulseaudio
#   --path=DEST/usr/lib/<triplet>      (the folder that holds espeak-ng-data/)
# stamp_onnx.zoo.whisper does exactly that (the folder is $STAMP_ESPEAK, default .venv/espeak).
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

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash "$(dirname "$0")/fetch_debs.sh" "$codename" "$work/root" "${packages[@]}"

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
