#!/usr/bin/env bash
# Fuzz smoke test: build the cargo-fuzz targets in fuzz/ and run each one briefly from a
# temporary copy of its committed seed corpus (so CI never grows fuzz/corpus/).
#
# Stable toolchain only: cargo-fuzz's nightly flags (-Zsanitizer=address, sancov passes) are
# allowed through RUSTC_BOOTSTRAP=1. AddressSanitizer (cargo-fuzz's default) works that way.
#
# Env knobs: FUZZ_RUNS (default 100000 executions per target), FUZZ_SECONDS (default 45, a
# time cap per target), FUZZ_TARGETS (default: every target in fuzz/fuzz_targets/).
# Exits non-zero if any target crashes or fails a property; the crashing input is kept under
# fuzz/artifacts/<target>/ (gitignored).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
fuzz_dir="$root/fuzz"

CARGO_FUZZ_VERSION=0.13.2
SANITIZER=address
RUNS=${FUZZ_RUNS:-100000}
SECONDS_CAP=${FUZZ_SECONDS:-45}
export RUSTC_BOOTSTRAP=1

log() { echo "== $*"; }

have=$(cargo fuzz --version 2>/dev/null || true)
if [ "$have" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION (found: ${have:-none})"
    cargo install cargo-fuzz --locked --debug --version "$CARGO_FUZZ_VERSION"
fi
log "$(cargo fuzz --version), sanitizer: $SANITIZER, $(rustc --version)"

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    targets=()
    for f in "$fuzz_dir"/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

t0=$(date +%s)
log "building the fuzz targets (cargo fuzz build builds them all)"
(cd "$fuzz_dir" && cargo fuzz build -s "$SANITIZER")
t1=$(date +%s)
log "build took $((t1 - t0)) s"

failed=()
summary=()
for t in "${targets[@]}"; do
    corpus="$work/corpus-$t"
    mkdir -p "$corpus"
    # Seeds only: anything else in a local fuzz/corpus/<t>/ is a developer's own growth.
    if compgen -G "$fuzz_dir/corpus/$t/seed-*" >/dev/null; then
        cp "$fuzz_dir"/corpus/"$t"/seed-* "$corpus"/
    fi
    out="$work/$t.log"
    log "fuzzing $t: -runs=$RUNS -max_total_time=$SECONDS_CAP"
    start=$(date +%s)
    rc=0
    (cd "$fuzz_dir" && cargo fuzz run -s "$SANITIZER" "$t" "$corpus" -- \
        -runs="$RUNS" -max_total_time="$SECONDS_CAP" -print_final_stats=1) >"$out" 2>&1 || rc=$?
    secs=$(($(date +%s) - start))
    done_line=$(grep -E '^Done [0-9]+ runs' "$out" | tail -n1 || true)
    execs=$(grep -E '^stat::number_of_executed_units' "$out" | awk '{print $2}' | tail -n1 || true)
    if [ "$rc" -ne 0 ]; then
        echo "!! $t FAILED (exit $rc) after ${secs}s; last lines of its log:"
        tail -n 60 "$out"
        failed+=("$t")
        summary+=("$(printf '%-22s FAILED (exit %s) after %ss' "$t" "$rc" "$secs")")
    else
        echo "$t: ${done_line:-no 'Done' line} (executed units: ${execs:-?}, ${secs}s)"
        summary+=("$(printf '%-22s %s (%ss)' "$t" "${done_line:-?}" "$secs")")
    fi
done
t2=$(date +%s)

log "summary (build $((t1 - t0)) s, fuzzing $((t2 - t1)) s)"
printf '%s\n' "${summary[@]}"
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz smoke FAILED: ${failed[*]} (inputs under fuzz/artifacts/)"
    exit 1
fi
