#!/usr/bin/env bash
# Create (or refresh) the agent-framework venv used by tests/integration/test_agent_framework.py.
#
# The OpenAI Agents SDK pins a newer openai SDK than the service's venv, so, like the LiteLLM
# gateway (scripts/gateway/start.sh), it gets its own venv. Reinstalls only when requirements.txt
# or constraints.txt changed; safe to run again. Prints the venv's python on its last line.
#
# Env (defaults in brackets):
#   AGENTS_VENV    the venv                          [<repo>/.venv-agents]
#   AGENTS_PYTHON  interpreter that creates the venv [python3]
#   RUN_DIR        install log                       [<repo>/.run]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${AGENTS_VENV:-$REPO/.venv-agents}"
RUN_DIR="${RUN_DIR:-$REPO/.run}"
PYTHON="${AGENTS_PYTHON:-python3}"
LOG="$RUN_DIR/agents-install.log"
mkdir -p "$RUN_DIR"

req_digest() { cat "$HERE/requirements.txt" "$HERE/constraints.txt" | sha256sum | cut -d' ' -f1; }
MARKER="$VENV/.agents-requirements.sha256"
if [[ ! -x "$VENV/bin/python" || ! -f "$MARKER" || "$(cat "$MARKER")" != "$(req_digest)" ]]; then
  echo "agents: installing the venv at $VENV (log: $LOG)" >&2
  t0=$SECONDS
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  if ! (cd "$HERE" && "$VENV/bin/python" -m pip install --disable-pip-version-check -r requirements.txt) >"$LOG" 2>&1; then
    echo "agents: pip install failed; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  req_digest >"$MARKER"
  echo "agents: venv ready in $((SECONDS - t0)) s" >&2
fi
echo "$VENV/bin/python"
