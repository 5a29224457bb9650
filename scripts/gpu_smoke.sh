#!/usr/bin/env bash
# The one command for a fresh GPU node: install the gpu extra, check the NVIDIA driver, then for each
# preset that fits this node's GPUs start it (Ray head + `serve deploy` of serve_config.yaml with that
# preset), run the integration suite's deployment smoke class, print each model's load time, time to
# first token and tokens/s, and stop it.
#
#   bash scripts/gpu_smoke.sh                      # every preset that fits
#   GPU_SMOKE_PRESETS="D4 E4" bash scripts/gpu_smoke.sh
#   bash scripts/gpu_smoke.sh --dry-run            # plan and checks only, no GPU (CI runs this)
#
# The dry run uses the project venv (.venv, CPU) and assumes a node of GPU_SMOKE_ASSUME_GPUS
# (default "NVIDIA L40S:4:48", a g6e.12xlarge) with driver GPU_SMOKE_ASSUME_DRIVER: it runs the
# driver check, the per-preset fit check against that node, validates each Serve config it would
# deploy, and collects the smoke test it would run - everything but the GPU work.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

RUN_DIR=${RUN_DIR:-.run}
OUT="$RUN_DIR/gpu-smoke"
PORT=${INFERENCE_PORT:-8085}
BASE_URL="http://127.0.0.1:$PORT"
SMOKE_TEST="tests/integration/test_model_connectivity.py::TestDeploymentSummary"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY_RUN" = 1 ]; then
  VENV=${VENV:-.venv}
  [ -x "$VENV/bin/python" ] || bash scripts/setup.sh
  PY="$VENV/bin/python"
  echo "==> [dry run] would install: $PY -m pip install -e '.[gpu,test]' into ${GPU_VENV:-.venv-gpu}"
  bash -n scripts/cluster.sh
  echo "==> [dry run] driver check and plan for ${GPU_SMOKE_ASSUME_GPUS:-NVIDIA L40S:4:48}"
  # shellcheck disable=SC2086
  "$PY" -m bench.gpu_smoke plan --out-dir "$OUT" \
    --assume-gpus "${GPU_SMOKE_ASSUME_GPUS:-NVIDIA L40S:4:48}" \
    --assume-driver "${GPU_SMOKE_ASSUME_DRIVER:-580.95.05}" ${GPU_SMOKE_PRESETS:+--presets $GPU_SMOKE_PRESETS}
  echo "==> [dry run] the smoke test it would run per preset"
  collected=$("$PY" -m pytest --collect-only -q -p no:cacheprovider "$SMOKE_TEST" 2>&1) || true
  grep -q "TestDeploymentSummary::" <<<"$collected" || { echo "$collected" >&2; exit 1; }
  while read -r preset; do
    echo "    would start $preset ($OUT/$preset.serve.yaml), run $SMOKE_TEST, probe, stop"
  done <"$OUT/plan.txt"
  echo "gpu_smoke dry run: ok"
  exit 0
fi

# --- on a GPU node ---------------------------------------------------------------------------
GPU_VENV=${GPU_VENV:-.venv-gpu}
if [ ! -f "$GPU_VENV/.installed-gpu" ] || [ pyproject.toml -nt "$GPU_VENV/.installed-gpu" ]; then
  echo "==> installing the gpu extra into $GPU_VENV (vllm with CUDA, ray[serve], test tools)"
  [ -d "$GPU_VENV" ] || python3 -m venv "$GPU_VENV"
  "$GPU_VENV/bin/pip" install -q --upgrade pip
  "$GPU_VENV/bin/pip" install -q -e ".[gpu,test]"
  touch "$GPU_VENV/.installed-gpu"
fi
PY="$GPU_VENV/bin/python"

echo "==> NVIDIA driver"
"$PY" -m deployments.engine.gpu_driver
echo "==> presets that fit this node"
# shellcheck disable=SC2086
"$PY" -m bench.gpu_smoke plan --out-dir "$OUT" ${GPU_SMOKE_PRESETS:+--presets $GPU_SMOKE_PRESETS}

export INFERENCE_API_KEY=${INFERENCE_API_KEY:-sk-smoke-$("$PY" -c "import secrets; print(secrets.token_hex(8))")}
export VENV="$GPU_VENV" CLUSTER_READY_TIMEOUT=${CLUSTER_READY_TIMEOUT:-2400}
trap 'bash scripts/cluster.sh stop >/dev/null 2>&1 || true' EXIT
failed=()
while read -r preset; do
  echo "==> $preset: starting (models load one after another per GPU)"
  SERVE_CONFIG="$OUT/$preset.serve.yaml" bash scripts/cluster.sh start >"$OUT/$preset.start.log" 2>&1 &
  starter=$!
  if ! "$PY" -m bench.gpu_smoke watch --base-url "$BASE_URL" --out "$OUT/$preset.load.json" \
      --timeout "$CLUSTER_READY_TIMEOUT" || ! wait "$starter"; then
    cat "$OUT/$preset.start.log"
    failed+=("$preset (start)")
    bash scripts/cluster.sh stop >/dev/null 2>&1 || true
    continue
  fi
  if ! INFERENCE_BASE_URL="$BASE_URL" INFERENCE_DEFAULT_PRESET="$preset" INFERENCE_REQUIRE_SERVICE=1 \
      "$PY" -m pytest -q -s -p no:cacheprovider "$SMOKE_TEST"; then
    failed+=("$preset (smoke test)")
  fi
  echo "==> $preset: load time, time to first token, tokens/s (one ${PROBE_TOKENS:-128}-token stream each)"
  "$PY" -m bench.gpu_smoke probe --base-url "$BASE_URL" --load "$OUT/$preset.load.json" \
    || failed+=("$preset (probe)")
  bash scripts/cluster.sh stop
done <"$OUT/plan.txt"

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_smoke: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "gpu_smoke: every planned preset started, passed the smoke test and was probed"
