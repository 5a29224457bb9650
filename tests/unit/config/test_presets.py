"""serve_app/config: the catalog and every preset YAML load, validate and fit their GPU; bad ones fail
at load time with errors that name the problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_app.config import (
    Catalog,
    ConfigError,
    ModelSpec,
    OrchestrationMode,
    Preset,
    Role,
    check_preset_fits,
    list_presets,
    load_catalog,
    load_preset,
)
from serve_app.config.fit import (
    MAX_TOTAL_UTILIZATION,
    TORCH_TOTAL_MEMORY_GB,
    TYPICAL_REQUEST_TOKENS,
    model_fit,
    runtime_overhead_gb,
    usable_memory_gb,
)

from ..support import CATALOG_PATH, PRESETS_DIR

PRESET_NAMES = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml") if p.stem != "catalog")


@pytest.mark.parametrize("name", PRESET_NAMES, ids=PRESET_NAMES)
def test_catalog_and_preset_are_valid_and_fit(name: str) -> None:
    catalog = load_catalog(CATALOG_PATH)
    ids = [spec.id for spec in catalog.models]
    assert ids and len(ids) == len(set(ids))
    for spec in catalog.models:
        assert spec.weights_gb > 0 and 0 < spec.gpu_fraction <= 1 and spec.max_model_len > 0
        assert (
            spec.kv_bytes_per_token
            == 2
            * spec.architecture.num_layers
            * spec.architecture.num_kv_heads
            * (spec.architecture.head_dim)
            * 2
        )

    preset = load_preset(PRESETS_DIR, name, catalog)
    assert preset.name == name
    assert set(preset.models) <= set(ids)
    assert set(preset.roles) <= set(preset.models)
    if preset.orchestration_mode is OrchestrationMode.critique:
        assert preset.model_with_role(Role.generator) and preset.model_with_role(Role.critic)

    fits = check_preset_fits(preset, catalog)
    assert [fit.model_id for fit in fits] == list(preset.models)
    for fit in fits:
        spec = catalog.get(fit.model_id)
        # vLLM's share is of the memory torch reports, which is below the nominal size.
        assert preset.gpu.name in TORCH_TOTAL_MEMORY_GB
        assert usable_memory_gb(preset.gpu) < preset.gpu.memory_gb
        assert fit.budget_gb == pytest.approx(spec.gpu_memory_utilization * usable_memory_gb(preset.gpu))
        assert fit.kv_min_gb == pytest.approx(spec.kv_bytes_per_token * spec.max_model_len / 1e9)
        assert fit.runtime_gb == pytest.approx(runtime_overhead_gb(spec))
        assert fit.spare_gb == pytest.approx(fit.budget_gb - fit.weights_gb - fit.runtime_gb - fit.kv_min_gb)
        assert fit.spare_gb >= 0, f"{fit.model_id} does not fit {preset.gpu.name}"
        assert spec.max_model_len <= spec.architecture.max_position_embeddings


def test_list_presets_names_every_preset_file_but_the_catalog() -> None:
    assert list_presets(PRESETS_DIR) == PRESET_NAMES
    assert "D4" in PRESET_NAMES and "catalog" not in PRESET_NAMES


def test_every_catalog_model_has_a_single_model_preset(catalog: Catalog) -> None:
    singles = {
        load_preset(PRESETS_DIR, name, catalog).models[0]
        for name in PRESET_NAMES
        if name.startswith("single-")
    }
    assert singles == {spec.id for spec in catalog.models}


def test_d4_is_qwen_generator_and_deepseek_critic(d4_preset: Preset) -> None:
    assert d4_preset.orchestration_mode is OrchestrationMode.critique
    assert d4_preset.model_with_role(Role.generator) == "qwen2.5-7b"
    assert d4_preset.model_with_role(Role.critic) == "deepseek-r1-7b"
    assert d4_preset.model_with_role(Role.judge) is None
    assert d4_preset.critique_max_rounds == 2


# ---------------------------------------------------------------- the fit check refuses what does not fit


def _preset(models: list[str], *, memory_gb: float = 48, count: int = 1, name: str = "overfull") -> Preset:
    return Preset(
        name=name,
        title="test preset",
        models=tuple(models),
        roles={m: Role.general for m in models},
        gpu={"name": "Test GPU", "memory_gb": memory_gb, "count": count},
    )


def test_fit_check_names_the_numbers_when_weights_exceed_the_budget(catalog: Catalog) -> None:
    # 0.45 x 15.2 GB = 6.8 GB of budget for 15.2 GB of weights.
    preset = _preset(["deepseek-r1-7b", "qwen2.5-7b"], memory_gb=16)
    with pytest.raises(ConfigError) as caught:
        check_preset_fits(preset, catalog)
    message = str(caught.value)
    assert "preset overfull does not fit" in message
    for expected in (
        "deepseek-r1-7b",
        "qwen2.5-7b",
        "budget 6.8 GB",  # 0.45 x 16 x 0.95: an unknown GPU counts 95 % of its nominal memory
        "weights 15.2 GB",
        "1.88 GB",
        "runtime 2.49 GB",
    ):
        assert expected in message, (expected, message)


def test_fit_check_counts_gpus_by_ray_fraction(catalog: Catalog) -> None:
    # phi-4 and granite each take a whole GPU (gpu_fraction 1.0): two GPUs for a one-GPU preset.
    preset = _preset(["phi-4", "granite-8b-code-128k"], memory_gb=80)
    with pytest.raises(
        ConfigError, match=re.escape("GPU fractions [1.0, 1.0] need 2 GPUs; the preset targets 1")
    ):
        check_preset_fits(preset, catalog)
    assert (
        len(check_preset_fits(_preset(["phi-4", "granite-8b-code-128k"], memory_gb=80, count=2), catalog))
        == 2
    )


def test_fit_check_refuses_utilisation_over_the_limit_on_one_gpu(catalog: Catalog) -> None:
    greedy = [
        catalog.get(model_id).model_copy(update={"gpu_memory_utilization": 0.6})
        for model_id in ("deepseek-r1-7b", "qwen2.5-7b")
    ]
    greedy_catalog = Catalog(models=tuple(greedy))
    with pytest.raises(ConfigError) as caught:
        check_preset_fits(_preset(["deepseek-r1-7b", "qwen2.5-7b"]), greedy_catalog)
    assert f"sums to 1.20 > {MAX_TOTAL_UTILIZATION}" in str(caught.value)


def test_fit_check_refuses_max_model_len_beyond_max_position_embeddings(catalog: Catalog) -> None:
    # granite-8b-code-instruct-128k's config.json: max_position_embeddings 128000, no RoPE scaling.
    granite = catalog.get("granite-8b-code-128k")
    assert granite.architecture.max_position_embeddings == 128000
    assert granite.max_model_len <= 128000
    too_long = granite.model_copy(update={"max_model_len": 131072})
    with pytest.raises(ConfigError) as caught:
        check_preset_fits(_preset([granite.id], memory_gb=80), Catalog(models=(too_long,)))
    assert "max_model_len 131072 > the checkpoint's max_position_embeddings 128000" in str(caught.value)
    assert len(check_preset_fits(_preset([granite.id], memory_gb=80), catalog)) == 1


def test_runtime_overhead_grows_with_model_size_and_includes_cuda_graphs(catalog: Catalog) -> None:
    small, large = catalog.get("llama-3.2-3b"), catalog.get("phi-4")
    assert runtime_overhead_gb(small) < runtime_overhead_gb(large)
    # CUDA graphs (on by default: the GPU profile never sets enforce_eager) cost real memory.
    assert runtime_overhead_gb(large, cuda_graphs=False) < runtime_overhead_gb(large) - 0.5
    # More than the 1 GB flat overhead the check used to assume, for every catalog model.
    assert all(runtime_overhead_gb(spec) > 1.5 for spec in catalog.models)


def test_usable_memory_is_what_torch_reports_not_the_nominal_size() -> None:
    l40s = {"name": "NVIDIA L40S", "memory_gb": 48}
    assert usable_memory_gb(Preset.model_validate({**_preset(["x"]).model_dump(), "gpu": l40s}).gpu) == 47.8
    assert usable_memory_gb(_preset(["x"], memory_gb=80).gpu) == pytest.approx(76.0)


def test_kv_capacity_in_tokens_and_the_concurrency_warning(catalog: Catalog) -> None:
    llama = catalog.get("llama-3.2-3b")
    a10g = Preset.model_validate(
        {**_preset([llama.id]).model_dump(), "gpu": {"name": "NVIDIA A10G", "memory_gb": 24}}
    ).gpu
    fit = model_fit(llama, a10g)
    expected = int((0.45 * 23.7 - 6.4 - runtime_overhead_gb(llama)) * 1e9 // llama.kv_bytes_per_token)
    assert fit.kv_capacity_tokens == expected
    assert 15_000 < expected < 30_000  # about 20k tokens for 32 concurrent requests
    assert llama.serving.max_ongoing_requests * TYPICAL_REQUEST_TOKENS > expected
    assert len(fit.warnings) == 1 and f"holds {expected} tokens" in fit.warnings[0]
    # Fewer concurrent requests (a serving override) fit, and the warning goes.
    assert model_fit(llama, a10g, max_ongoing_requests=8).warnings == ()


def test_fit_check_logs_warnings_and_takes_serving_overrides(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    preset = load_preset(PRESETS_DIR, "single-llama-3.2-3b", catalog)
    with caplog.at_level("INFO", logger="ray.serve"):
        fits = check_preset_fits(preset, catalog)
    assert fits[0].warnings and "KV cache holds" in caplog.text
    assert f"llama-3.2-3b holds {fits[0].kv_capacity_tokens} tokens of KV cache per replica" in caplog.text
    assert check_preset_fits(preset, catalog, {"llama-3.2-3b": 8})[0].warnings == ()


# ---------------------------------------------------------------- schema strictness


def _d4_raw() -> dict:
    return yaml.safe_load((PRESETS_DIR / "D4.yaml").read_text())


@pytest.mark.parametrize(
    ("where", "mutate"),
    [
        ("preset", lambda raw: raw.update(orchestraton_mode="critique")),
        ("gpu", lambda raw: raw["gpu"].update(vram_gb=48)),
    ],
    ids=["misspelt-preset-key", "misspelt-gpu-key"],
)
def test_preset_rejects_extra_keys(where: str, mutate) -> None:
    raw = _d4_raw()
    mutate(raw)
    with pytest.raises(ValidationError) as caught:
        Preset.model_validate(raw)
    assert [e["type"] for e in caught.value.errors()] == ["extra_forbidden"]


def test_catalog_entry_rejects_extra_keys() -> None:
    raw = yaml.safe_load(CATALOG_PATH.read_text())
    raw["models"][0]["gpu_memory_utilisation"] = 0.5  # British spelling of a real key
    with pytest.raises(ValidationError) as caught:
        Catalog.model_validate(raw)
    error = caught.value.errors()[0]
    assert error["type"] == "extra_forbidden" and error["loc"][-1] == "gpu_memory_utilisation"


def test_load_preset_fails_on_a_misspelt_key_in_yaml(tmp_path: Path, catalog: Catalog) -> None:
    raw = _d4_raw()
    raw["critique_rounds"] = 3
    (tmp_path / "D4.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValidationError, match="critique_rounds"):
        load_preset(tmp_path, "D4", catalog)


def test_critique_preset_needs_generator_and_critic_roles() -> None:
    raw = _d4_raw()
    raw["roles"] = {"qwen2.5-7b": "generator", "deepseek-r1-7b": "judge"}
    with pytest.raises(ValidationError, match="critique mode needs one generator and one critic role"):
        Preset.model_validate(raw)
    raw["roles"] = {}
    with pytest.raises(ValidationError, match="critique mode needs"):
        Preset.model_validate(raw)


def test_preset_roles_must_name_preset_models_and_models_are_unique() -> None:
    raw = _d4_raw()
    raw["roles"]["phi-4"] = "judge"
    with pytest.raises(ValidationError, match=re.escape("roles name models outside the preset: ['phi-4']")):
        Preset.model_validate(raw)
    raw = _d4_raw()
    raw["models"] = ["qwen2.5-7b", "qwen2.5-7b", "deepseek-r1-7b"]
    with pytest.raises(ValidationError, match="lists a model twice"):
        Preset.model_validate(raw)


def test_catalog_rejects_duplicate_ids(catalog: Catalog) -> None:
    first = catalog.models[0].model_dump()
    with pytest.raises(ValidationError, match="duplicate model ids"):
        Catalog.model_validate({"models": [first, first]})


def test_model_spec_bounds() -> None:
    spec = yaml.safe_load(CATALOG_PATH.read_text())["models"][0]
    for field, bad in (("gpu_memory_utilization", 0.99), ("gpu_fraction", 1.5), ("weights_gb", 0)):
        with pytest.raises(ValidationError) as caught:
            ModelSpec.model_validate({**spec, field: bad})
        assert caught.value.errors()[0]["loc"] == (field,)


def test_autoscaling_bounds_are_checked() -> None:
    spec = yaml.safe_load(CATALOG_PATH.read_text())["models"][0]
    with pytest.raises(ValidationError, match="min_replicas 3 > max_replicas 2"):
        ModelSpec.model_validate({**spec, "serving": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}})
    with pytest.raises(ValidationError, match="initial_replicas must lie between"):
        ModelSpec.model_validate(
            {
                **spec,
                "serving": {"autoscaling": {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 5}},
            }
        )


def test_serving_options_become_ray_deployment_options(catalog: Catalog) -> None:
    options = catalog.get("llama-3.2-3b").serving.deployment_options()
    assert options["max_ongoing_requests"] == 32
    assert options["max_queued_requests"] == 128
    autoscaling = options["autoscaling_config"]
    assert isinstance(autoscaling, dict)
    assert autoscaling["max_replicas"] == 4
    assert autoscaling["target_ongoing_requests"] == 16
    assert options["backpressure_config"] == {"status_code": 429, "retry_after_s": 2}


# ---------------------------------------------------------------- loading errors


def test_unknown_preset_lists_the_available_ones(catalog: Catalog) -> None:
    with pytest.raises(ConfigError) as caught:
        load_preset(PRESETS_DIR, "D5", catalog)
    assert "unknown preset 'D5'" in str(caught.value)
    assert "'D4'" in str(caught.value) and "'catalog'" not in str(caught.value)


def test_preset_file_must_declare_its_own_name(tmp_path: Path, catalog: Catalog) -> None:
    (tmp_path / "D9.yaml").write_text((PRESETS_DIR / "D4.yaml").read_text())
    with pytest.raises(ConfigError, match="declares name 'D4', expected 'D9'"):
        load_preset(tmp_path, "D9", catalog)


def test_preset_models_must_be_in_the_catalog(tmp_path: Path, catalog: Catalog) -> None:
    raw = _d4_raw()
    raw["models"] = [*raw["models"], "gpt-5"]
    (tmp_path / "D4.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=re.escape("missing from the catalog: ['gpt-5']")):
        load_preset(tmp_path, "D4", catalog)
