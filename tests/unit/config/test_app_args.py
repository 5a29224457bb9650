"""serve_app/config/app_args.py: the application builder's arguments and the preset override."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.config import AppArgs, CpuProfile
from serve_app.config.app_args import PRESET_ENV_VAR

from ..support import PROJECT_ROOT


def test_env_var_overrides_the_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_DEFAULT_PRESET", "single-phi-4")
    assert PRESET_ENV_VAR == "INFERENCE_DEFAULT_PRESET"
    assert AppArgs().resolved_preset() == "single-phi-4"
    assert AppArgs(preset="D4").resolved_preset() == "single-phi-4"


def test_without_the_env_var_the_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERENCE_DEFAULT_PRESET", raising=False)
    assert AppArgs().resolved_preset() == "D4"
    assert AppArgs(preset="single-qwen2.5-7b").resolved_preset() == "single-qwen2.5-7b"


def test_empty_env_var_does_not_blank_the_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_DEFAULT_PRESET", "")
    assert AppArgs(preset="single-phi-4").resolved_preset() == "single-phi-4"


def test_args_reject_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValidationError) as caught:
        AppArgs.model_validate({"preset": "D4", "presetz": "D4"})
    assert caught.value.errors()[0]["type"] == "extra_forbidden"
    with pytest.raises(ValidationError):
        AppArgs.model_validate({"profile": "tpu"})
    with pytest.raises(ValidationError):
        AppArgs.model_validate({"limits": {"max_n": 0}})


def test_relative_paths_resolve_from_the_project_root(tmp_path) -> None:
    args = AppArgs()
    assert args.resolve(args.catalog_path) == PROJECT_ROOT / "presets" / "catalog.yaml"
    assert args.resolve(str(tmp_path)) == tmp_path
    assert CpuProfile().checkpoint_path() == PROJECT_ROOT / "models" / "tiny-llama"
    assert CpuProfile(checkpoint=str(tmp_path)).checkpoint_path() == tmp_path


def test_ingress_defaults_are_larger_than_a_model_deployment() -> None:
    options = AppArgs().ingress.deployment_options()
    assert options["max_ongoing_requests"] == 256 and options["max_queued_requests"] == 512


def test_preset_from_env_false_pins_the_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_DEFAULT_PRESET", "single-phi-4")
    assert AppArgs(preset="D4", preset_from_env=False).resolved_preset() == "D4"
    assert AppArgs(preset="D4", preset_from_env=True).resolved_preset() == "single-phi-4"


def test_serving_overrides_are_validated_serving_blocks() -> None:
    args = AppArgs.model_validate({"serving_overrides": {"qwen2.5-7b": {"max_ongoing_requests": 4}}})
    options = args.serving_overrides["qwen2.5-7b"].deployment_options()
    assert options["max_ongoing_requests"] == 4 and options["max_queued_requests"] == 64
    with pytest.raises(ValidationError):
        AppArgs.model_validate({"serving_overrides": {"qwen2.5-7b": {"max_ongoing": 4}}})
