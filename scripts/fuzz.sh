#!/usr/bin/env bash
# Fuzzes the input decoders (README, Fuzzing): every cargo-fuzz target in fuzz/ for SECONDS each
# (default 60), then one line per target with its executions. Runs on a clean clone: installs
# cargo-fuzz once into a cache directory and the C++ compiler libFuzzer is built with, both
# idempotently; needs the `nightly` toolchain (cargo-fuzz's instrumentation flags are nightly
# only). Each target reads the committed seeds (fuzz/corpus/<target>, never written) and grows a
# scratch corpus (fuzz/scratch/<target>, ignored by git, kept between runs). Exits non-zero if
# any target crashed, after printing the end of its log: the panic, the artifact path under
# fuzz/artifacts/ and the command that reproduces it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS]  (seconds per target, default 60)" >&2
  exit 2
fi
toolchain=${CX_FUZZ_TOOLCHAIN:-nightly}
# Pinned so a clean clone installs what this script was written against.
cargo_fuzz_version=0.13.2
root=${CX_CARGO_FUZZ_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/cx-sentinel/cargo-fuzz}

if ! command -v c++ >/dev/null; then
  echo "fuzz.sh: installing g++ (libFuzzer is C++)" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >&2
fi
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: the '$toolchain' toolchain is missing (rustup toolchain install $toolchain)" >&2
  exit 2
fi
if [[ $("$root/bin/cargo-fuzz" --version 2>/dev/null) != "cargo-fuzz $cargo_fuzz_version" ]]; then
  echo "fuzz.sh: installing cargo-fuzz $cargo_fuzz_version into $root" >&2
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --root "$root" >&2
fi
export PATH="$root/bin:$PATH"

# No sanitizer: the code under test is safe Rust, so what can go wrong is a panic (debug
# assertions and overflow checks are on, `-a`), and ASan would halve the executions and clash
# with jemalloc, which the crate links. (cargo-fuzz takes no `--locked`; fuzz/Cargo.lock is
# committed and cargo builds what it pins.)
# Built once per machine, not per clone (a cold build is about ten minutes on two cores).
target_dir=${CX_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cx-sentinel/fuzz-target}
flags=(--sanitizer none --debug-assertions --release --target-dir "$target_dir")
echo "== cargo fuzz build (toolchain $toolchain)"
cargo "+$toolchain" fuzz build "${flags[@]}"

mkdir -p fuzz/scratch/logs
mapfile -t targets < <(cargo "+$toolchain" fuzz list)
crashed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/scratch/$t"
  log="fuzz/scratch/logs/$t.log"
  echo "== $t: ${seconds}s (log: $log)"
  status=0
  # New inputs go to the first corpus directory; the seeds are only read.
  cargo "+$toolchain" fuzz run "${flags[@]}" "$t" "fuzz/scratch/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
  if [[ $status -ne 0 ]]; then
    crashed+=("$t")
    summary+=("$(printf '%-20s CRASHED (exit %s)' "$t" "$status")")
    tail -n 60 "$log"
  else
    summary+=("$(printf '%-20s %12s executions in %ss' "$t" "${execs:-?}" "$seconds")")
  fi
done

echo "== executions per target"
printf '%s\n' "${summary[@]}"
if [[ ${#crashed[@]} -gt 0 ]]; then
  echo "fuzz.sh: crashed: ${crashed[*]} (artifacts under fuzz/artifacts/, logs under fuzz/scratch/logs/)" >&2
  exit 1
fi
