#!/usr/bin/env bash
# Builds every fuzz target and runs each for a while from a temporary copy of the committed
# corpus; fails if any target crashes. See fuzz/README.md.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]     # SECONDS per target, default 60; all targets
#
# Environment:
#   FUZZ_SANITIZER   address (default) or none: the -s of cargo fuzz
#   FUZZ_RSS_MB      libFuzzer -rss_limit_mb (default 2048)
#   FUZZ_KEEP_CORPUS directory: keep each target's grown corpus under it instead of deleting it
#
# Only stable Rust is assumed: cargo-fuzz needs -Z flags, which RUSTC_BOOTSTRAP=1 allows.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
export RUSTC_BOOTSTRAP=1

seconds="${1:-60}"
shift || true
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac
sanitizer="${FUZZ_SANITIZER:-address}"
rss_mb="${FUZZ_RSS_MB:-2048}"

all_targets=(krpc_decode native_decode engine_inputs routing_table manifest_parse)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

# Largest input per target (bytes): room for every message or structure the target needs.
max_len() {
    case "$1" in
        krpc_decode) echo 4096 ;;
        native_decode) echo 8192 ;;
        manifest_parse) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

if ! command -v cargo-fuzz > /dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "== building (release, debug assertions, sanitizer: $sanitizer)"
cargo fuzz build --release --debug-assertions --sanitizer "$sanitizer"

work="$(mktemp -d "${TMPDIR:-/tmp}/kad-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

failed=()
summary=()
for t in "${targets[@]}"; do
    if [ ! -f "fuzz_targets/$t.rs" ]; then
        echo "unknown target $t (known: ${all_targets[*]})" >&2
        exit 2
    fi
    corpus="$work/corpus/$t"
    mkdir -p "$corpus"
    if [ -d "corpus/$t" ]; then
        cp -R "corpus/$t/." "$corpus/"
    fi
    log="$work/$t.log"
    echo "== $t: ${seconds}s from $(find "$corpus" -type f | wc -l) seeds"
    status=ok
    # -timeout: an input taking longer than that is a hang, reported as a crash.
    if ! cargo fuzz run --release --debug-assertions --sanitizer "$sanitizer" "$t" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -max_len="$(max_len "$t")" \
        -timeout=60 -print_final_stats=1 > "$log" 2>&1; then
        status=CRASH
        failed+=("$t")
        tail -n 60 "$log"
        # Keep the log and the input beside the artifacts cargo-fuzz wrote.
        mkdir -p "artifacts/$t"
        cp "$log" "artifacts/$t/run.log"
    fi
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
    rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
    last="$(grep -E '^#[0-9]+.* cov: ' "$log" | tail -1 || true)"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$last")"
    ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$last")"
    corp="$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<< "$last")"
    line="$(printf '%-15s seconds=%-5s execs=%-10s execs/s=%-7s corpus=%-12s cov=%-6s ft=%-6s %s' \
        "$t" "$seconds" "${execs:-?}" "${rate:-?}" "${corp:-?}" "${cov:-?}" "${ft:-?}" "$status")"
    echo "summary: $line"
    summary+=("$line")
    if [ -n "${FUZZ_KEEP_CORPUS:-}" ]; then
        mkdir -p "$FUZZ_KEEP_CORPUS/$t"
        cp -R "$corpus/." "$FUZZ_KEEP_CORPUS/$t/"
    fi
done

echo
echo "== fuzz summary (corpus = files/bytes at the end; cov, ft = libFuzzer coverage counters)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (inputs and logs under fuzz/artifacts/<target>/)" >&2
    exit 1
fi
