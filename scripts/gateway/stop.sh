#!/usr/bin/env bash
# Stop the gateway started by start.sh (the pid in $RUN_DIR/gateway.pid, nothing else).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
RUN_DIR="${RUN_DIR:-$REPO/.run}"
PID_FILE="$RUN_DIR/gateway.pid"
TIMEOUT="${LLM_GATEWAY_STOP_TIMEOUT:-20}"

if [[ ! -f "$PID_FILE" ]]; then
  echo "gateway: not running (no $PID_FILE)"
  exit 0
fi
pid="$(cat "$PID_FILE")"
is_ours() { kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q litellm; }
if ! is_ours; then
  echo "gateway: pid $pid is not running (stale pid file removed)"
  rm -f "$PID_FILE" "$RUN_DIR/gateway.url"
  exit 0
fi

# start.sh runs it in its own session, so its process group is its pid: signal the group, which
# also reaches any worker processes it forked. Fall back to the pid alone otherwise.
target="$pid"
[[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]] && target="-$pid"
kill -TERM -- "$target" 2>/dev/null || true
for ((i = 0; i < TIMEOUT * 2; i++)); do
  is_ours || break
  sleep 0.5
done
if is_ours; then
  echo "gateway: pid $pid still alive after ${TIMEOUT} s; sending SIGKILL"
  kill -KILL -- "$target" 2>/dev/null || true
fi
rm -f "$PID_FILE" "$RUN_DIR/gateway.url"
echo "gateway: stopped (pid $pid)"
