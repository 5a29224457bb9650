"""A real agent framework, the OpenAI Agents SDK, runs a full tool round trip against the service:
the model must call the tool, the SDK runs it and sends the result back as a `role: "tool"`
message, and the model answers.

The SDK lives in its own venv (it pins a newer openai SDK than the service's), made by
scripts/agents/setup.sh, which this test runs (it is a no-op when the venv is up to date). A venv
that cannot be built fails the test when INFERENCE_REQUIRE_SERVICE is set (CI), and skips otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from .support import BASE_URL, D4_GENERATOR, REQUIRE_SERVICE

pytestmark = [pytest.mark.integration, pytest.mark.requires_model]

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "agents" / "setup.sh"
ROUND_TRIP = REPO / "scripts" / "agents" / "tool_roundtrip.py"


@pytest.fixture(scope="session")
def agents_python() -> str:
    done = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        message = f"scripts/agents/setup.sh failed:\n{done.stderr[-2000:]}"
        if REQUIRE_SERVICE:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return done.stdout.strip().splitlines()[-1]


def run_agent(python: str, seed: int) -> dict[str, Any]:
    done = subprocess.run(
        [
            python,
            str(ROUND_TRIP),
            "--base-url",
            f"{BASE_URL}/v1",
            "--model",
            D4_GENERATOR,
            "--seed",
            str(seed),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"agent run failed:\n{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr)
    return result


def test_openai_agents_sdk_tool_round_trip(agents_python: str, require_model: Any) -> None:
    require_model(D4_GENERATOR)
    result = run_agent(agents_python, seed=7)
    # The tool ran exactly once, with arguments that fit its schema.
    (arguments,) = result["tool_calls"]
    jsonschema.validate(arguments, result["parameters"])
    # Call, tool result, then the model's answer to it: the whole loop went through the service.
    assert result["items"][:2] == ["tool_call_item", "tool_call_output_item"], result["items"]
    assert result["items"][-1] == "message_output_item", result["items"]
    assert isinstance(result["final_output"], str)
