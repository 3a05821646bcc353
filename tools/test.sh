#!/usr/bin/env bash
# Builds expertstore if needed and runs the whole test suite (storage tests once per I/O engine).
# Usage: tools/test.sh [extra ctest args...]. BUILD_DIR overrides the build directory (default build/).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$build"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "$@"
