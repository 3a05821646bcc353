#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for expertstore and builds it: installs the Debian packages the build
# needs (idempotent: only what is missing), configures CMake (Release) into build/ and builds.
# Usage: tools/setup.sh [--no-build] [extra cmake args...]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

packages=(
  build-essential cmake ninja-build pkg-config git
  librocksdb-dev liburing-dev libxxhash-dev libjemalloc-dev
  libflatbuffers-dev flatbuffers-compiler
  libboost1.81-dev
  libsimdjson-dev libicu-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang-14 libclang-rt-14-dev wrk procps time bc curl
  chromium
  ceph-mon ceph-osd ceph-common librados-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm for the chat-template reference (jinja_reference): Debian's, unless a node with its npm is there.
if ! command -v npm >/dev/null; then missing+=(nodejs npm); fi
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=()
  if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

build_args=()
no_build=0
for a in "$@"; do
  if [ "$a" = --no-build ]; then no_build=1; else build_args+=("$a"); fi
done

# The chat-template tests' reference renderer (the jinja_reference ctest), pinned.
jinja_version=0.5.13
if ! grep -qs "\"version\": \"$jinja_version\"" "$root/build/npm/node_modules/@huggingface/jinja/package.json"; then
  echo "setup: installing @huggingface/jinja@$jinja_version under build/npm" >&2
  npm install --silent --no-audit --no-fund --prefix "$root/build/npm" "@huggingface/jinja@$jinja_version" >/dev/null
fi

cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release "${build_args[@]}" >/dev/null
if ((no_build == 0)); then
  cmake --build "$root/build"
fi
