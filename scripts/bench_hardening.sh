#!/usr/bin/env bash
# Issue 8's benchmarks (not CI): writes DIR/hardening.json with
#   tls:   learner frames/s with TLS + tokens against plain gRPC, 3 alternating pairs (goal >= 0.95);
#   wan:   frames/s with 20 ms added each way on the actors' links (tc netem; reported as
#          unavailable where the kernel has no netem);
#   chaos: SIGKILL a random part (actor, learner, coordinator, Redis) every 30 s: time to solve,
#          lost versions (goal 0), double-counted frames (goal 0);
#   soak:  RSS and open files per process over a long run (goal: RSS drift under 10 %), hangs.
# Needs root for the network namespaces.
#
#   scripts/bench_hardening.sh [--out DIR] [--seconds N] [--chaos-min M] [--soak-min M]
set -euo pipefail
source "$(dirname "$0")/setup.sh"
OUT=out/bench
SECS=15
CHAOS=10
SOAK=60
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --chaos-min) CHAOS=$2; shift 2 ;;
    --soak-min) SOAK=$2; shift 2 ;;
    *) echo "bench_hardening.sh: unknown argument $1 (expected --out, --seconds, --chaos-min, --soak-min)" >&2; exit 64 ;;
  esac
done
troupe_setup
mkdir -p "$OUT"
cd "$TROUPE_ROOT"
run() { cargo bench -p tests --bench hardening -- "$@" 2>/dev/null | grep '^{'; }
tls=$(run tls "$SECS")
wan=$(run wan "$SECS")
chaos=$(run chaos "$CHAOS")
soak=$(run soak "$SOAK")
printf '{"tls": %s, "wan": %s, "chaos": %s, "soak": %s}\n' "$tls" "$wan" "$chaos" "$soak" > "$OUT/hardening.json"
cat "$OUT/hardening.json"
