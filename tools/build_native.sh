#!/usr/bin/env bash
# Build the native ai.stamp kernels (native/*.cc) into stamp_onnx/native/libstamp_onnx_ops.so.
#
#   tools/build_native.sh [--headers DIR]
#
# DIR holds the ONNX Runtime C/C++ headers (onnxruntime_cxx_api.h, ...). Without --headers they
# come from Debian trixie's libonnxruntime-dev (ORT 1.21), fetched with tools/fetch_debs.sh into
# .venv/ort-headers once. The library is rebuilt only when a source (or this script) is newer.
# Flags: never -ffast-math / -Ofast and -ffp-contract=off (no FMA contraction): TokenQDQ must
# stay bit-exact with the numpy reference.
# On any failure it prints one line to stderr (the full log is in build/native.log) and exits 1;
# the models then run the ONNX function bodies instead.
#
# The outcome is recorded in build/native.status, one line, for the tests (tests/backends.py):
#   built                   the library is there and newer than every source
#   unavailable: REASON     no C++ compiler, or the headers could not be fetched: this machine
#                           cannot build the kernels; their tests skip
#   failed: REASON          a compiler and headers were there and the build failed: the tests of
#                           the kernels fail (a machine that can build them must have them)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
mkdir -p build stamp_onnx/native
status=build/native.status

# fail KIND MESSAGE: KIND is "unavailable" or "failed" (see above).
fail() {
    echo "$1: $2" >"$status"
    echo "build_native: $2: native kernels not built, the function bodies will be used" >&2
    exit 1
}

headers=
while [[ $# -gt 0 ]]; do
    case $1 in
        --headers)
            [[ $# -ge 2 ]] || fail failed "--headers needs a folder"
            headers=$2
            shift 2
            ;;
        *) fail failed "unknown argument '$1' (usage: $0 [--headers DIR])" ;;
    esac
done

out=stamp_onnx/native/libstamp_onnx_ops.so
sources=(native/*.cc)
log=build/native.log

# The compiler first: without one there is nothing to fetch the headers for.
cxx=${CXX:-g++}
command -v "$cxx" >/dev/null 2>&1 || fail unavailable "no C++ compiler ($cxx)"

if [[ -z $headers ]]; then
    fetched=.venv/ort-headers
    headers=$fetched/usr/include/onnxruntime
    if [[ ! -f $headers/onnxruntime_cxx_api.h ]]; then
        bash tools/fetch_debs.sh trixie "$fetched" libonnxruntime-dev >"$log" 2>&1 ||
            fail unavailable "ONNX Runtime headers could not be fetched (libonnxruntime-dev from Debian trixie, see $log)"
    fi
elif [[ -f $headers/usr/include/onnxruntime/onnxruntime_cxx_api.h ]]; then
    headers=$headers/usr/include/onnxruntime  # the root of an unpacked .deb
fi
[[ -f $headers/onnxruntime_cxx_api.h ]] || fail failed "no onnxruntime_cxx_api.h in $headers"

# Up to date: the library is newer than every source, header and this script.
if [[ -f $out ]]; then
    stale=0
    for f in native/*.cc native/*.h tools/build_native.sh; do
        [[ $f -nt $out ]] && stale=1
    done
    if [[ $stale == 0 ]]; then
        echo built >"$status"
        exit 0
    fi
fi

flags=(-std=c++17 -O3 -shared -fPIC -pthread -ffp-contract=off -fopenmp-simd -fvisibility=hidden -Wall -Wextra)
[[ $(uname -m) == x86_64 ]] && flags+=(-march=x86-64-v2)  # SSE4.1: vector rounding (roundps)
tmp=$out.tmp.$$
if ! "$cxx" "${flags[@]}" -isystem "$headers" "${sources[@]}" -o "$tmp" >"$log" 2>&1; then
    rm -f "$tmp"
    fail failed "compile error with $cxx (see $log)"
fi
mv -f "$tmp" "$out"  # atomic: a running process never loads a half-written library
echo built >"$status"
echo "build_native: built $out"
