#!/usr/bin/env bash
# Long soaks, run by hand (CI runs the short versions): the fault tests at the
# brief's full size (a 30 s coderd outage, a long flap, a 100,000-connect storm),
# then every fault suite over and over to shake out rare failures, then (if
# cargo-fuzz is installed) each fuzz target for a while.
#
#   scripts/soak.sh                      # defaults below
#   ROUNDS=50 FUZZ_SECONDS=3600 scripts/soak.sh
#
# Knobs (environment): ROUNDS (repeats of the fault suites, default 20),
# OUTAGE_SECS (default 30), FLAPS (coderd down/up cycles of 2 s, default 30),
# STORM_CONNECTS (default 100000), FUZZ_SECONDS (per target, default 0 = skip),
# PROFILE (cargo profile flag, default --release).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

ROUNDS=${ROUNDS:-20}
PROFILE=${PROFILE:---release}
FUZZ_SECONDS=${FUZZ_SECONDS:-0}
SUITES=(--test fault_coderd --test fault_clients --test fault_shutdown --test seqgap_server --test fuzz_like)

step() { printf '\n==> %s\n' "$*"; }

step "full-size faults: ${OUTAGE_SECS:-30}s outage, ${FLAPS:-30} flaps, ${STORM_CONNECTS:-100000} connects"
BLP_SOAK_OUTAGE_SECS=${OUTAGE_SECS:-30} \
BLP_SOAK_FLAPS=${FLAPS:-30} \
BLP_SOAK_STORM_CONNECTS=${STORM_CONNECTS:-100000} \
  cargo test $PROFILE --test fault_coderd --test fault_clients -- --test-threads=1

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  seed=$RANDOM$RANDOM
  step "fault suites, round $round of $ROUNDS (PROPTEST_RNG_SEED=$seed)"
  if ! PROPTEST_RNG_SEED=$seed cargo test $PROFILE "${SUITES[@]}" >"$log" 2>&1; then
    cat "$log"
    echo "round $round failed"
    exit 1
  fi
  grep -E '^test result' "$log"
done

if [ "$FUZZ_SECONDS" -gt 0 ]; then
  if cargo fuzz --version >/dev/null 2>&1; then
    vectors=$(readlink -f tests/vectors)
    for target in frame_stream message; do
      step "fuzz $target for ${FUZZ_SECONDS}s"
      mkdir -p "fuzz/corpus/$target"
      RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" "$PWD/fuzz/corpus/$target" "$vectors" -- \
        -max_len=70000 -max_total_time="$FUZZ_SECONDS" -print_final_stats=1
    done
  else
    echo "cargo-fuzz is not installed (cargo install cargo-fuzz); fuzzing skipped"
  fi
fi

echo
echo "soak passed"
