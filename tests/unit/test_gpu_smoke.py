"""bench/gpu_smoke.py and scripts/gpu_smoke.sh --dry-run: which presets a GPU node runs, the configs
it would deploy, the driver gate, and the TTFT / tokens/s arithmetic of the probe."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from bench import gpu_smoke
from serve_app.config import AppArgs

REPO = Path(__file__).resolve().parents[2]
ARGS = AppArgs.model_validate(yaml.safe_load(gpu_smoke.SERVE_CONFIG.read_text())["applications"][0]["args"])


def _runs(gpus: str) -> dict[str, bool]:
    return {e.preset: e.runs for e in gpu_smoke.plan(gpu_smoke.parse_gpus(gpus), ARGS)}


def test_a_four_l40s_node_runs_every_preset() -> None:
    assert all(_runs("NVIDIA L40S:4:48").values())


def test_a_one_l40s_node_skips_the_four_gpu_ensemble() -> None:
    runs = _runs("NVIDIA L40S:1:48")
    assert runs["E4"] is False and runs["D4"] is True and runs["single-phi-4"] is True


def test_an_a10g_node_runs_only_what_fits_24_gb() -> None:
    runs = _runs("NVIDIA A10G:1:24")
    assert [name for name, ok in runs.items() if ok] == ["single-llama-3.2-3b"]


def test_plan_writes_validated_serve_configs_and_refuses_an_old_driver(tmp_path: Path) -> None:
    argv = ["plan", "--out-dir", str(tmp_path), "--assume-gpus", "NVIDIA L40S:1:48"]
    assert gpu_smoke.main([*argv, "--assume-driver", "580.95.05", "--presets", "D4"]) == 0
    assert (tmp_path / "plan.txt").read_text() == "D4\n"
    config = yaml.safe_load((tmp_path / "D4.serve.yaml").read_text())
    assert config["applications"][0]["args"]["preset"] == "D4"
    assert config["applications"][0]["args"]["profile"] == "gpu"
    assert gpu_smoke.main([*argv, "--assume-driver", "535.183.01"]) == 2


def _fake_sse_transport(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"content": "GPUs"}}]},
        {"choices": [{"index": 0, "delta": {"content": " stream"}}]},
        {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}},
    ]
    text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


async def test_probe_reads_ttft_and_completion_tokens_from_the_stream() -> None:
    transport = httpx.MockTransport(_fake_sse_transport)
    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
        ttft, rate, tokens = await gpu_smoke._probe_one(client, "qwen2.5-7b")
    assert tokens == 2 and ttft >= 0 and rate >= 0


@pytest.mark.timeout(120)
def test_the_dry_run_passes_without_a_gpu(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", "scripts/gpu_smoke.sh", "--dry-run"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "RUN_DIR": str(tmp_path), "VENV": str(REPO / ".venv")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gpu_smoke dry run: ok" in result.stdout
    assert (tmp_path / "gpu-smoke" / "E4.serve.yaml").is_file()
