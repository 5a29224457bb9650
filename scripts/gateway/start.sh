#!/usr/bin/env bash
# Start the LiteLLM proxy gateway in front of the inference service; safe to run again.
#
#  1. Creates the gateway's own venv at $GATEWAY_VENV (python3 -m venv + pip install -r requirements.txt)
#     when it is missing, and reinstalls when requirements.txt / constraints.txt changed.
#  2. Starts `litellm --config litellm_config.yaml` in the background (pid file, log in $RUN_DIR),
#     offline: no model-cost-map fetch, no telemetry, no admin UI, no database.
#  3. Waits until GET /health/liveliness answers; on failure prints the log tail and exits non-zero.
# If the gateway from an earlier run is still alive it only waits for it to answer.
#
# Env (defaults in brackets):
#   INFERENCE_GATEWAY_UPSTREAM  the service's OpenAI base URL              [http://localhost:8085/v1]
#   INFERENCE_API_KEY           the service's bearer key (first of a list) [unset: placeholder "no-key"]
#   LLM_GATEWAY_API_KEY         master key clients send to the gateway     [sk-gateway-test]
#   LLM_GATEWAY_PORT / LLM_GATEWAY_HOST                                    [8080 / 127.0.0.1]
#   LLM_GATEWAY_START_TIMEOUT   seconds to wait for the gateway to answer  [120]
#   LLM_GATEWAY_CONFIG          config file                                [scripts/gateway/litellm_config.yaml]
#   GATEWAY_VENV                the gateway's venv                         [<repo>/.venv-gateway]
#   GATEWAY_PYTHON              interpreter that creates the venv          [python3]
#   RUN_DIR                     pid file and logs                          [<repo>/.run]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${GATEWAY_VENV:-$REPO/.venv-gateway}"
RUN_DIR="${RUN_DIR:-$REPO/.run}"
PORT="${LLM_GATEWAY_PORT:-8080}"
HOST="${LLM_GATEWAY_HOST:-127.0.0.1}"
CONFIG="${LLM_GATEWAY_CONFIG:-$HERE/litellm_config.yaml}"
TIMEOUT="${LLM_GATEWAY_START_TIMEOUT:-120}"
PYTHON="${GATEWAY_PYTHON:-python3}"
LOG="$RUN_DIR/gateway.log"
PID_FILE="$RUN_DIR/gateway.pid"
URL_FILE="$RUN_DIR/gateway.url" # the health URL of the running gateway
INSTALL_LOG="$RUN_DIR/gateway-install.log"

case "$HOST" in 0.0.0.0 | "::" | "") PROBE_HOST=127.0.0.1 ;; *) PROBE_HOST="$HOST" ;; esac
HEALTH_URL="http://$PROBE_HOST:$PORT/health/liveliness"

mkdir -p "$RUN_DIR"

# ------------------------------------------------------------------ venv
req_digest() { cat "$HERE/requirements.txt" "$HERE/constraints.txt" | sha256sum | cut -d' ' -f1; }
MARKER="$VENV/.gateway-requirements.sha256"
if [[ ! -x "$VENV/bin/litellm" || ! -f "$MARKER" || "$(cat "$MARKER")" != "$(req_digest)" ]]; then
  echo "gateway: installing the venv at $VENV (log: $INSTALL_LOG)"
  t0=$SECONDS
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -r "$HERE/requirements.txt" >"$INSTALL_LOG" 2>&1; then
    echo "gateway: pip install failed; last lines of $INSTALL_LOG:" >&2
    grep -v '^WARNING: Location' "$INSTALL_LOG" | tail -n 30 >&2
    exit 1
  fi
  req_digest >"$MARKER"
  echo "gateway: venv ready in $((SECONDS - t0)) s ($(du -sh "$VENV" | cut -f1))"
fi
PY="$VENV/bin/python"

# ------------------------------------------------------------------ helpers
alive() { # pid -> true while it runs (a zombie does not count)
  local st
  st="$(ps -o stat= -p "$1" 2>/dev/null)" && [[ -n "$st" && "$st" != Z* ]]
}
is_ours() { # pid -> true if it is alive and a litellm process (guards against a reused pid)
  [[ -n "${1:-}" ]] && alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q litellm
}
healthy() {
  "$PY" - "$HEALTH_URL" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}
port_taken() {
  "$PY" - "$PROBE_HOST" "$PORT" <<'EOF' >/dev/null 2>&1
import socket, sys
with socket.socket() as s:
    s.settimeout(1)
    sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 1)
EOF
}
fail() { # message [pid to stop: only one this run started]
  echo "gateway: $1" >&2
  if [[ -n "${2:-}" ]] && alive "$2"; then
    kill "$2" 2>/dev/null || true
    rm -f "$PID_FILE" "$URL_FILE"
  fi
  echo "---- last lines of $LOG ----" >&2
  tail -n 40 "$LOG" >&2 || true
  exit 1
}
wait_ready() { # pid [stop it on failure: yes|no]
  local start=$SECONDS stop_pid=""
  [[ "${2:-yes}" == yes ]] && stop_pid="$1"
  while ((SECONDS - start < TIMEOUT)); do
    # alive, not is_ours: just after the fork the child may not have exec'd litellm yet
    alive "$1" || { rm -f "$PID_FILE" "$URL_FILE"; fail "the gateway (pid $1) exited before answering"; }
    if healthy; then
      echo "gateway: ready at http://$PROBE_HOST:$PORT (pid $1) after $((SECONDS - start)) s; log $LOG"
      return 0
    fi
    sleep 0.5
  done
  fail "no answer from $HEALTH_URL within ${TIMEOUT} s" "$stop_pid"
}

# ------------------------------------------------------------------ already running?
if [[ -f "$PID_FILE" ]]; then
  old_pid="$(cat "$PID_FILE")"
  if is_ours "$old_pid"; then
    old_url="$(cat "$URL_FILE" 2>/dev/null || true)"
    if [[ "$old_url" != "$HEALTH_URL" ]]; then
      echo "gateway: already running (pid $old_pid, ${old_url:-unknown address}); run stop.sh first" >&2
      exit 1
    fi
    echo "gateway: already running (pid $old_pid)"
    wait_ready "$old_pid" no
    exit 0
  fi
  rm -f "$PID_FILE" "$URL_FILE"
fi
if port_taken; then
  echo "gateway: $PROBE_HOST:$PORT is already in use by another process; set LLM_GATEWAY_PORT" >&2
  exit 1
fi

# ------------------------------------------------------------------ environment
export INFERENCE_GATEWAY_UPSTREAM="${INFERENCE_GATEWAY_UPSTREAM:-http://localhost:8085/v1}"
# The service accepts a comma-separated list of keys (deployments/ingress/http_guard.py): send the first one.
# LiteLLM's OpenAI client refuses to call without a key; the service ignores it when it has none.
upstream_key="$(printf '%s' "${INFERENCE_API_KEY:-}" | cut -d, -f1 | tr -d '[:space:]')"
export INFERENCE_API_KEY="${upstream_key:-no-key}"
export LITELLM_MASTER_KEY="${LLM_GATEWAY_API_KEY:-sk-gateway-test}"
# Offline: bundled cost map and data files instead of fetching them from GitHub; no telemetry.
export LITELLM_LOCAL_MODEL_COST_MAP=True
export LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS=True
export LITELLM_LOCAL_BLOG_POSTS=True
export LITELLM_LOCAL_POLICY_TEMPLATES=True
export LITELLM_LOCAL_AUTOROUTER_PRESETS=True
export LITELLM_TELEMETRY_DISABLED=True
export HF_HUB_OFFLINE=1
export DISABLE_ADMIN_UI=True
export LITELLM_MODE=PRODUCTION # do not load a stray .env file
export PYTHONUNBUFFERED=1     # log lines reach gateway.log as they happen
unset DATABASE_URL             # DB-less by design: master key only, no spend logs

# ------------------------------------------------------------------ start
[[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"
cd "$RUN_DIR"
LAUNCH=()
command -v setsid >/dev/null && LAUNCH=(setsid) # own session: the caller's Ctrl-C does not reach it
nohup "${LAUNCH[@]}" "$VENV/bin/litellm" --config "$CONFIG" --host "$HOST" --port "$PORT" \
  >"$LOG" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$PID_FILE"
echo "$HEALTH_URL" >"$URL_FILE"
echo "gateway: started pid $pid -> upstream $INFERENCE_GATEWAY_UPSTREAM"
wait_ready "$pid"
