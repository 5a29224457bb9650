"""The benchmark must not rot: a tiny run of `python -m bench.run` (two requests per level, both
systems: a bare vLLM server it starts itself, and the running cluster) must complete without errors.
It is not a timed test; it checks that figures are produced, not what they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from integration.support import API_KEY, BASE_URL

PROJECT_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_tiny_benchmark_run_measures_both_systems(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    command = [
        sys.executable,
        "-m",
        "bench.run",
        "--tiny",
        "--cluster-url",
        BASE_URL,
        "--json",
        str(report),
    ]
    env = {**os.environ, "INFERENCE_API_KEY": API_KEY}
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    print(done.stdout[-4000:])
    assert done.returncode == 0, (
        f"bench exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
    figures = json.loads(report.read_text())
    text = json.dumps(figures)
    for system in ("bare", "cluster"):
        assert system in text, f"no figures for {system} in {report}"
    assert "ttft" in text.lower() and "errors" in text.lower()
