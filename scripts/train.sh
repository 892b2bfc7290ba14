#!/usr/bin/env bash
# The main job: train a run config (default configs/cartpole.toml) with a local Troupe cluster
# (Redis, coordinator, learner, 2 actors as separate processes) until the mean return of the
# last 100 episodes reaches the config's target_return or the budget ends. Installs what it
# needs on first use. Every gRPC link runs over TLS with a bearer token per role (a throwaway
# CA and tokens from scripts/make-certs.sh, deleted afterwards); --insecure runs plain gRPC
# without tokens (to measure what TLS costs). Redis keeps an append-only file, as deployed.
#
#   scripts/train.sh [--out DIR] [--seed S] [--budget-s N] [--config FILE] [--actors N] [--insecure]
#
# Leaves in DIR: summary.json, policy.safetensors, learning_curve.png and logs/.
set -euo pipefail
# The summary's times from launch count from here.
TROUPE_LAUNCHED_AT=$(date +%s.%N)
export TROUPE_LAUNCHED_AT
source "$(dirname "$0")/setup.sh"

OUT=out/train
SEED=1
BUDGET=600
CONFIG="$TROUPE_ROOT/configs/cartpole.toml"
ACTORS=2
INSECURE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --budget-s) BUDGET=$2; shift 2 ;;
    --config) CONFIG=$2; shift 2 ;;
    --actors) ACTORS=$2; shift 2 ;;
    --insecure) INSECURE=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "train.sh: unknown argument $1 (expected --out, --seed, --budget-s, --config, --actors, --insecure)" >&2; exit 64 ;;
  esac
done
case "$SEED" in ''|*[!0-9]*) echo "train.sh: --seed: expected a non-negative integer, got '$SEED'" >&2; exit 64 ;; esac
case "$BUDGET" in ''|*[!0-9.]*) echo "train.sh: --budget-s: expected a number of seconds, got '$BUDGET'" >&2; exit 64 ;; esac

troupe_setup
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
RUN=$(mktemp -d)
PIDS=()    # redis, then the coordinator: stopped last
WORKERS=() # the learner and actors: stopped first, while the coordinator takes the final publish
stop_all() { # pids...
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  # Give each process its drain deadline, then make sure nothing is left.
  for _ in $(seq 1 200); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    # `return 0`, not `return`: in a trap handler a bare return gives the status of the command
    # before the trap (`exit 143`), and errexit would end the clean-up there.
    if [ $alive = 0 ]; then return 0; fi
    sleep 0.05
  done
  for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
}
WATCH_PID=
cleanup() {
  # A second signal must not cut the clean-up short: it stops every process and deletes the
  # run's secrets whatever stopped the script.
  trap '' INT TERM HUP
  set +e
  if [ -n "$WATCH_PID" ]; then stop_all "$WATCH_PID"; fi
  if [ ${#WORKERS[@]} -gt 0 ]; then stop_all "${WORKERS[@]}"; fi
  if [ ${#PIDS[@]} -gt 0 ]; then stop_all "${PIDS[@]}"; fi
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# The run config with the seed applied.
sed "s/^seed = .*/seed = $SEED/" "$CONFIG" > "$RUN/run.toml"
cp "$RUN/run.toml" "$OUT/run.toml"

# TLS and role tokens: the servers (coordinator, learner) present the certificate and accept
# the tokens in secrets/tokens; every client verifies the server against the CA and sends its
# own role's token. The learner holds the learner token in its tokens dir too: it keys the
# secrets that bind actor ids, which the learner checks on rollout streams.
if [ "$INSECURE" = 1 ]; then
  SCHEME=http
  COORD_SECURITY=()
  LEARNER_SECURITY=()
  ACTOR_SECURITY=()
  WATCH_SECURITY=()
else
  SCHEME=https
  SECRETS="$RUN/secrets"
  bash "$TROUPE_ROOT/scripts/make-certs.sh" "$SECRETS"
  COORD_SECURITY=(--tls-cert "$SECRETS/tls/tls.crt" --tls-key "$SECRETS/tls/tls.key" --tokens-dir "$SECRETS/tokens")
  LEARNER_SECURITY=(--tls-cert "$SECRETS/tls/tls.crt" --tls-key "$SECRETS/tls/tls.key" --tls-ca "$SECRETS/tls/ca.crt"
    --tokens-dir "$SECRETS/tokens" --token-file "$SECRETS/tokens/learner")
  ACTOR_SECURITY=(--tls-ca "$SECRETS/tls/ca.crt" --token-file "$SECRETS/tokens/actor")
  WATCH_SECURITY=(--tls-ca "$SECRETS/tls/ca.crt" --token-file "$SECRETS/tokens/evaluator")
fi

wait_ready() { # file, pid, name
  for _ in $(seq 1 1500); do
    [ -f "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || { echo "train.sh: $3 exited at start-up; see $OUT/logs/$3.log" >&2; tail -5 "$OUT/logs/$3.log" >&2; exit 1; }
    sleep 0.02
  done
  echo "train.sh: $3 not ready after 30 s" >&2; exit 1
}

# An append-only file fsynced every second, as compose and the chart run Redis.
mkdir -p "$RUN/redis"
redis-server --port 0 --unixsocket "$RUN/redis.sock" --save "" --appendonly yes --appendfsync everysec \
  --dir "$RUN/redis" --daemonize no > "$OUT/logs/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do [ -S "$RUN/redis.sock" ] && break; sleep 0.05; done

"$TROUPE_BIN/coordinator" --config "$RUN/run.toml" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --redis-url "redis+unix://$RUN/redis.sock" --ready-file "$RUN/coordinator.json" "${COORD_SECURITY[@]}" \
  > "$OUT/logs/coordinator.log" 2>&1 &
PIDS+=($!)
wait_ready "$RUN/coordinator.json" $! coordinator
COORD="$SCHEME://$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["grpc"])' "$RUN/coordinator.json")"

# Actors register without a learner; they wait for each policy's first version.
for i in $(seq 1 "$ACTORS"); do
  "$TROUPE_BIN/actor" --coordinator "$COORD" --metrics-listen 127.0.0.1:0 --health-listen 127.0.0.1:0 "${ACTOR_SECURITY[@]}" \
    > "$OUT/logs/actor-$i.log" 2>&1 &
  WORKERS+=($!)
done

# One learner per policy (one, `default`, for a single-agent run). The coordinator knows the
# policies once it knows the env's agents: at once for a native env, after the first actor's
# report for a Python-hosted one.
POLICIES=$("$TROUPE_BIN/troupe-watch" --coordinator "$COORD" "${WATCH_SECURITY[@]}" --list-policies --budget-s 120) \
  || { echo "train.sh: the run's policies did not become known; see $OUT/logs/actor-1.log" >&2; tail -5 "$OUT/logs/actor-1.log" >&2; exit 1; }
LEARNERS=()
for p in $POLICIES; do
  "$TROUPE_BIN/learner" --coordinator "$COORD" --policy "$p" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --seed "$SEED" \
    --ready-file "$RUN/learner-$p.json" "${LEARNER_SECURITY[@]}" > "$OUT/logs/learner-$p.log" 2>&1 &
  WORKERS+=($!)
  LEARNERS+=("$p:$!")
done
for entry in "${LEARNERS[@]}"; do
  wait_ready "$RUN/learner-${entry%%:*}.json" "${entry##*:}" "learner-${entry%%:*}"
done
if [ "$INSECURE" = 1 ]; then SECURITY_NOTE="plain gRPC, no tokens (--insecure)"; else SECURITY_NOTE="TLS and tokens"; fi
troupe_log "cluster up: coordinator $COORD, learners for policies [$(echo $POLICIES)], $ACTORS actors, $SECURITY_NOTE; logs in $OUT/logs"

status=0
# In the background, with `wait`: bash runs a trap only once the foreground command ends, so a
# foreground watcher would hold off SIGTERM until the budget ran out. `wait` returns at once.
"$TROUPE_BIN/troupe-watch" --coordinator "$COORD" "${WATCH_SECURITY[@]}" --out "$OUT" --budget-s "$BUDGET" &
WATCH_PID=$!
wait "$WATCH_PID" || status=$?
WATCH_PID=
# 3 = budget ended unsolved: the run still produced its outputs.
if [ $status = 3 ]; then status=0; fi
exit $status
