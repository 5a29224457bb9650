#!/usr/bin/env bash
# Start, stop or check the local CPU cluster: a Ray head plus the Serve app of serve_config.cpu.yaml.
#   scripts/cluster.sh start   # returns once every model of the preset is ready (or fails)
#   scripts/cluster.sh deploy  # redeploy a changed config onto the running cluster
#   scripts/cluster.sh stop
#   scripts/cluster.sh status
#   scripts/cluster.sh dashboard   # the Ray dashboard's URL and the token its login asks for
#   scripts/cluster.sh env         # `eval "$(scripts/cluster.sh env)"`: plain `serve`, `ray` authenticate
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
CONFIG=${SERVE_CONFIG:-serve_config.cpu.yaml}
PORT=${INFERENCE_PORT:-8085}
METRICS_PORT=${RAY_METRICS_PORT:-9101}
READY_TIMEOUT=${CLUSTER_READY_TIMEOUT:-900}
# Space-separated readiness paths, one per application of the config.
READY_PATHS=${READY_PATHS:-/health/ready}
RUN_DIR=${RUN_DIR:-.run}
# CLUSTER_CPUSET=0 pins Ray and every process it starts to CPU 0 (taskset; children inherit it):
# the cluster gets half of a 2-core machine, to check that the suite holds on a slower machine.
# Ray still counts the machine's logical CPUs, so the same replicas are scheduled.
CLUSTER_CPUSET=${CLUSTER_CPUSET:-}
PIN_ARGS=()
[ -z "$CLUSTER_CPUSET" ] || PIN_ARGS=(--num-cpus "$(nproc --all)")
export PATH="$PWD/$VENV/bin:$PATH"
# Ray's workers import the application from this checkout (not whichever checkout the venv was
# installed from, e.g. another git worktree sharing the venv).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RAY_USAGE_STATS_ENABLED=0
# Ray Serve's high-throughput mode (Ray >= 2.56; docs/benchmarks.md measures it): HAProxy (C) on
# the Serve port instead of Ray's Python HTTP proxy, the ingress replica serving HTTP itself
# (direct ingress), gRPC between replicas. Read by `ray start`, so they apply to a new cluster;
# set both to 0 for the classic Python proxy.
export RAY_SERVE_ENABLE_HA_PROXY=${RAY_SERVE_ENABLE_HA_PROXY:-1}
export RAY_SERVE_THROUGHPUT_OPTIMIZED=${RAY_SERVE_THROUGHPUT_OPTIMIZED:-1}
# HAProxy reloads whenever a replica starts or stops (a redeploy, an autoscaling step), and its
# reloaded-out process cuts the connections it still carries `hard-stop-after` later: Ray's default
# 120 s cut a stream of a half-CPU graceful update at the TCP level. It is held at the config's
# request_timeout_s (the longest a request may run; 3600 when the config sets none).
if [ -z "${RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S:-}" ]; then
  RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S=$(python3 - "$CONFIG" <<'PY'
import sys, yaml
timeout = ((yaml.safe_load(open(sys.argv[1])) or {}).get("http_options") or {}).get("request_timeout_s")
print(int(timeout + 0.999) if timeout else 3600)
PY
  )
fi
export RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S
# HAProxy's own stats listener defaults to 9101, Ray's metrics port here.
export RAY_SERVE_HAPROXY_METRICS_PORT=${RAY_SERVE_HAPROXY_METRICS_PORT:-9102}
# Ray 2.60 clusters require a token; the head and the serve CLI share one kept in the run dir.
mkdir -p "$RUN_DIR"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$PWD/$RUN_DIR/ray_auth_token"
[ -s "$RAY_AUTH_TOKEN_PATH" ] || python3 -c "import secrets; print(secrets.token_hex(32))" >"$RAY_AUTH_TOKEN_PATH"

start() {
  if ! ray status >/dev/null 2>&1; then
    echo "==> starting Ray head (metrics on :$METRICS_PORT, dashboard on :8265;" \
      "HAProxy ingress ${RAY_SERVE_ENABLE_HA_PROXY}, throughput-optimized ${RAY_SERVE_THROUGHPUT_OPTIMIZED}," \
      "HAProxy hard-stop-after ${RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S} s)"
    ${CLUSTER_CPUSET:+taskset -c "$CLUSTER_CPUSET"} ray start --head --disable-usage-stats --metrics-export-port="$METRICS_PORT" \
      --dashboard-host=127.0.0.1 --include-dashboard=true "${PIN_ARGS[@]}" >"$RUN_DIR/ray-start.log" 2>&1 \
      || { cat "$RUN_DIR/ray-start.log"; exit 1; }
  fi
  deploy
}

# (Re)deploy the config onto the running Ray cluster and wait until every app is ready. Serve
# replaces only the deployments whose code or arguments changed; their old replicas finish their
# in-flight requests first (graceful_shutdown_timeout_s).
deploy() {
  echo "==> deploying $CONFIG"
  serve deploy "$CONFIG" >"$RUN_DIR/serve-deploy.log" 2>&1 || { cat "$RUN_DIR/serve-deploy.log"; exit 1; }
  local started=$SECONDS
  all_ready() {
    local path
    serve status 2>/dev/null | grep -qE "DEPLOYING|UPDATING|NOT_STARTED" && return 1
    for path in $READY_PATHS; do
      curl -sf "http://127.0.0.1:$PORT$path" >/dev/null 2>&1 || return 1
    done
  }
  until all_ready; do
    if (( SECONDS - started > READY_TIMEOUT )); then
      echo "cluster not ready after ${READY_TIMEOUT}s"; serve status || true
      tail -50 /tmp/ray/session_latest/logs/serve/*.log 2>/dev/null | tail -80 || true
      exit 1
    fi
    if serve status 2>/dev/null | grep -q "DEPLOY_FAILED"; then
      echo "deployment failed:"; serve status; exit 1
    fi
    sleep 3
  done
  echo "==> ready after $((SECONDS - started)) s on http://127.0.0.1:$PORT"
}

# Every process descended from this machine's Ray node (its raylet and GCS): the Serve replicas and
# the vLLM engine processes they started. `ray stop --force` kills Ray's own processes by name, but a
# vLLM EngineCore/Worker is a child of a replica under its own title: killed replicas leave them
# running, orphaned, with their memory (1-2 GB each on the CPU profile), until the machine runs out.
cluster_pids() {
  local roots
  roots=$(pgrep -x raylet; pgrep -x gcs_server) || true
  [ -n "$roots" ] || return 0
  ps -eo pid=,ppid= | awk -v roots="$roots" '
    BEGIN { n = split(roots, r, /[ \n]+/); for (i = 1; i <= n; i++) if (r[i] != "") keep[r[i]] = 1 }
    { parent[$1] = $2 }
    END {
      do { grew = 0
        for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grew = 1 }
      } while (grew)
      for (p in keep) print p
    }'
}

stop() {
  local pids
  pids=$(cluster_pids)
  serve shutdown -y >/dev/null 2>&1 || true
  ray stop --force >/dev/null 2>&1 || true
  # What `ray stop` left of the cluster's process trees (orphaned vLLM engines), by pid.
  [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  deploy) deploy ;;
  stop) stop ;;
  status) serve status ;;
  dashboard)
    echo "Ray dashboard: http://127.0.0.1:8265 (on a remote host: ssh -L 8265:127.0.0.1:8265 <host>)"
    echo "It asks for this cluster's token (Ray token auth; kept in $RAY_AUTH_TOKEN_PATH):"
    cat "$RAY_AUTH_TOKEN_PATH" ;;
  env)
    echo "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH='$RAY_AUTH_TOKEN_PATH'" ;;
  *) echo "usage: $0 start|deploy|stop|status|dashboard|env" >&2; exit 2 ;;
esac
