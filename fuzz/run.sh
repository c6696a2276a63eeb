#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) and prints how many
# inputs each executed. Seeds come from testdata/fuzz/<target>; what the
# fuzzer learns is kept in fuzz/corpus/<target> (not committed); a crash is
# written to fuzz/artifacts/<target>/ and fails the run: add it to
# testdata/fuzz/<target>/ once fixed, so it stays a regression input.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     (FUZZ_STABLE=1: use stable even if nightly exists)
#
# Needs cargo-fuzz (cargo install cargo-fuzz). With a nightly toolchain the
# targets run under AddressSanitizer; on stable (as in CI) they run with
# libFuzzer's coverage instrumentation only (-s none), which still catches
# panics, hangs (-timeout) and runaway memory (-rss_limit_mb).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(tarball bzip2 bzip2_block sparse ext4 ext4_write userdb device_conf overlay cache_index disk luks lzma2_chunks)
command -v cargo-fuzz >/dev/null || { echo "install cargo-fuzz: cargo install cargo-fuzz" >&2; exit 2; }
if [ -z "${FUZZ_STABLE:-}" ] && cargo +nightly --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz run)
else
  fuzz=(cargo fuzz run -s none)
fi
printf '| target | seconds | executions | exec/s | corpus |\n|---|---|---|---|---|\n' > summary.md
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  # libFuzzer holds its corpus in memory: disk images of 1 MiB passed the
  # 1 GiB RSS limit within minutes, so disks are fuzzed at 256 KiB.
  max_len=1048576
  [ "$t" != disk ] || max_len=262144
  "${fuzz[@]}" "$t" "corpus/$t" "../testdata/fuzz/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=1024 -max_len="$max_len" -timeout=10 2>&1 | tee "$log" | grep -E -A2 "^(==|Done|SUMMARY|thread)" || true
  if grep -q "ERROR: libFuzzer\|panicked\|SUMMARY: " "$log"; then
    echo "fuzz target $t failed; see fuzz/artifacts/$t" >&2
    exit 1
  fi
  # libFuzzer ends with "Done N runs in S second(s)".
  done_line=$(grep -E "^Done [0-9]+ runs" "$log" | tail -1)
  execs=$(echo "$done_line" | sed -E 's/^Done ([0-9]+) runs.*/\1/')
  took=$(echo "$done_line" | sed -E 's/.* in ([0-9]+) second.*/\1/')
  rate=$(( execs / (took > 0 ? took : 1) ))
  corpus=$(ls "corpus/$t" | wc -l)
  printf '| %s | %s | %s | %s | %s |\n' "$t" "$secs" "$execs" "$rate" "$corpus" >> summary.md
  rm -f "$log"
done
cat summary.md
