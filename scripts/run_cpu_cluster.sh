#!/usr/bin/env bash
# The main job on a machine without a GPU: install, build the tiny checkpoint, start the CPU
# cluster serving the D4 preset on :8085, and answer one real chat completion and one critique.
# The cluster keeps running; stop it with: bash scripts/cluster.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/cluster.sh start
BASE=${INFERENCE_BASE_URL:-http://127.0.0.1:8085}
AUTH=()
[ -n "${INFERENCE_API_KEY:-}" ] && AUTH=(-H "Authorization: Bearer ${INFERENCE_API_KEY%%,*}")
echo "==> GET /v1/models"
curl -sf "${AUTH[@]}" "$BASE/v1/models" | .venv/bin/python -m json.tool
echo "==> POST /v1/chat/completions (qwen2.5-7b)"
curl -sf "${AUTH[@]}" "$BASE/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "qwen2.5-7b", "messages": [{"role": "user", "content": "Hello, respond briefly"}], "max_tokens": 16}' \
  | .venv/bin/python -m json.tool
echo "==> POST /v1/chat/completions (D4 critique: generator drafts, critic critiques, generator revises)"
curl -sf "${AUTH[@]}" "$BASE/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "D4", "messages": [{"role": "user", "content": "Write a function that reverses a string"}], "max_tokens": 16, "orchestration": {"mode": "critique", "rounds": 1}}' \
  | .venv/bin/python -c 'import json,sys; r=json.load(sys.stdin); o=r["orchestration"]; print(json.dumps({"models_used": o["models_used"], "stop_reason": o["stop_reason"], "steps": len(o["steps"]), "usage": r["usage"]}, indent=2))'
echo "==> the cluster is running at $BASE (Ray dashboard http://127.0.0.1:8265); stop: bash scripts/cluster.sh stop"
