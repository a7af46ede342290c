#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets in fuzz/ (cargo-fuzz + libFuzzer).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#   SECONDS  time per target (default 60); TARGET defaults to every target.
# Prints per target the executions, coverage and whether a crash was found;
# exits non-zero if any target crashed. A crashing input is kept under
# fuzz/artifacts/<target>/ (replay it: cargo fuzz run <target> <file>).
#
# Only a stable toolchain is needed: cargo-fuzz passes nightly -Z flags, which
# RUSTC_BOOTSTRAP=1 allows, and no sanitizer is used (ASan needs nightly's
# runtime), so a crash means a panic, an abort or a failed oracle assertion.
# The seeds in fuzz/corpus/<target>/ are read only; what a run discovers
# grows in fuzz/target/corpus/<target>/ (kept between runs, not committed).
# Extra libFuzzer flags can be passed in FUZZ_ARGS (e.g. "-max_len=65536"),
# cargo-fuzz build flags in FUZZ_BUILD_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[fuzz.sh] %s\n' "$*" >&2; }
secs="${1:-60}"
shift || true
export RUSTC_BOOTSTRAP=1
export PATH="$HOME/.cargo/bin:$PATH"
# Built like the release binary (-O: no debug assertions or overflow checks).
# FUZZ_BUILD_FLAGS="--sanitizer none -O -a" adds them (one more full build).
read -r -a build_flags <<<"${FUZZ_BUILD_FLAGS:---sanitizer none -O}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (one-off)"
  cargo install --locked cargo-fuzz
fi

cd fuzz
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
log "building ${targets[*]}"
cargo fuzz build "${build_flags[@]}"

failed=()
mkdir -p target/logs
for t in "${targets[@]}"; do
  grown="target/corpus/$t"
  out="target/logs/$t.log"
  mkdir -p "$grown" "artifacts/$t"
  log "running $t for ${secs}s (log: fuzz/$out)"
  status=0
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  cargo fuzz run "${build_flags[@]}" "$t" "$grown" "corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 ${FUZZ_ARGS:-} >"$out" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n1)
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$out" | tail -n1 || true)
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$out" | tail -n1)
    printf '%-14s CRASH  executions=%s %s artifact=%s\n' "$t" "${execs:-?}" "$cov" "${artifact:-see log}"
    grep -E -m3 "panicked at|assertion|ERROR: libFuzzer" "$out" | sed 's/^/    /' || true
  else
    printf '%-14s ok     executions=%s %s\n' "$t" "${execs:-?}" "$cov"
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  log "crash found in: ${failed[*]}"
  exit 1
fi
log "no crash"
