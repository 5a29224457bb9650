#!/usr/bin/env bash
# Every test: lint and types, unit tests, then the CPU cluster and the LiteLLM gateway are started
# once and the integration suite runs against them with real vLLM engines. A skip because the
# service or gateway is unreachable is a failure here (INFERENCE_REQUIRE_*).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
RUN_DIR=${RUN_DIR:-.run}
mkdir -p "$RUN_DIR"

echo "==> ruff and mypy"
ruff check .
mypy serve_app deployments k8s bench tests

echo "==> unit tests"
python -m pytest tests/unit -q -p no:cacheprovider

cleanup() {
  local status=$?
  if [ $status -ne 0 ]; then
    echo "==> failure: last serve logs"
    tail -n 40 /tmp/ray/session_latest/logs/serve/replica_*.log 2>/dev/null | tail -n 120 || true
  fi
  bash scripts/gateway/stop.sh >/dev/null 2>&1 || true
  bash scripts/cluster.sh stop
  exit $status
}
trap cleanup EXIT

# The suite's cluster: the README's CPU D4 app plus a tiny-queue app for backpressure tests, with an
# API key so that authentication is exercised too.
export INFERENCE_API_KEY=${INFERENCE_API_KEY:-sk-ci-$(python -c "import secrets; print(secrets.token_hex(8))")}
export INFERENCE_ADMIN_KEY=${INFERENCE_ADMIN_KEY:-sk-admin-$(python -c "import secrets; print(secrets.token_hex(8))")}
# Per-key quotas (tests/integration/test_quotas.py): a copy, because the reload test rewrites it.
if [ -z "${INFERENCE_KEYS_FILE:-}" ]; then
  cp tests/keys.test.yaml "$RUN_DIR/keys.yaml"
  INFERENCE_KEYS_FILE="$(cd "$RUN_DIR" && pwd)/keys.yaml"
  export INFERENCE_KEYS_FILE
fi
export INFERENCE_TIGHT_BASE_URL=${INFERENCE_TIGHT_BASE_URL:-http://127.0.0.1:8085/tight}
echo "==> starting the CPU cluster (D4 + tight app on real vLLM CPU engines)"
SERVE_CONFIG=tests/serve_config.test.yaml READY_PATHS="/health/ready /tight/health/ready" \
  bash scripts/cluster.sh start
echo "==> starting the LiteLLM gateway"
bash scripts/gateway/start.sh
echo "==> the agent-framework venv (OpenAI Agents SDK, for test_agent_framework.py)"
bash scripts/agents/setup.sh >/dev/null

export INFERENCE_REQUIRE_SERVICE=1 INFERENCE_REQUIRE_GATEWAY=1 INFERENCE_REQUIRE_TRACING=1 INFERENCE_DEFAULT_PRESET=D4
export INFERENCE_METRICS_URL=${INFERENCE_METRICS_URL:-http://127.0.0.1:${RAY_METRICS_PORT:-9101}/metrics}
echo "==> integration tests (HTTP only; the same suite runs against any deployment)"
python -m pytest tests/integration -v -p no:cacheprovider --durations=15

# Last, because they are destructive (engine kill, redeploys) though they restore the cluster:
# fault recovery, graceful update, memory freed by unload, and the benchmark's tiny run.
echo "==> system tests (local process access)"
python -m pytest tests/system -v -p no:cacheprovider --durations=10

# The four catalog models D4 leaves out, as preset E4 (ensemble), so every catalog id answers.
echo "==> redeploying as preset E4 (phi-4, granite-8b-code-128k, llama-3.2-3b, phi-3-medium-128k)"
SERVE_CONFIG=tests/serve_config.e4.yaml READY_PATHS="/health/ready" bash scripts/cluster.sh deploy
INFERENCE_DEFAULT_PRESET=E4 python -m pytest -v -p no:cacheprovider \
  tests/integration/test_model_connectivity.py tests/integration/test_preset_mode.py
