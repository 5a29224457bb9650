"""deployments/ingress/dispatch.py: RequestDispatcher over the real D4 preset, FakeModelClients and
a FakeDirectory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from deployments.ingress import dispatch as service_module
from deployments.ingress.dispatch import RequestDispatcher
from deployments.ingress.http_guard import KeyPolicy
from deployments.ingress.routes import build_api
from serve_app.config import AppArgs, Catalog, Preset, check_preset_fits, load_preset
from serve_app.config.fit import ModelFit
from serve_app.errors import InvalidRequest, ModelNotFound, ServiceUnavailable
from serve_app.protocol import ChatCompletionRequest, ChatCompletionResponse, CompletionRequest

from .fakes import FakeDirectory, FakeMetrics, FakeModelClient, Reply
from .support import PRESETS_DIR, parse_sse, sse_json

GEN, CRITIC = "qwen2.5-7b", "deepseek-r1-7b"
USER = [{"role": "user", "content": "Reverse a string in Python."}]


def make_service(
    catalog: Catalog,
    preset: Preset,
    fits: list[ModelFit],
    states: dict[str, Any] | None = None,
    clients: dict[str, FakeModelClient] | None = None,
    **args: Any,
) -> tuple[RequestDispatcher, FakeDirectory, dict[str, FakeModelClient], FakeMetrics]:
    clients = clients or {m: FakeModelClient(m) for m in preset.models}
    directory = FakeDirectory(states or dict.fromkeys(preset.models, "ready"))
    metrics = FakeMetrics()
    service = RequestDispatcher(AppArgs(**args), catalog, preset, fits, clients, directory, metrics)
    return service, directory, clients, metrics


@pytest.fixture
def d4(catalog: Catalog, d4_preset: Preset, d4_fits: list[ModelFit]):
    def build(
        states: dict[str, Any] | None = None, clients: dict[str, FakeModelClient] | None = None, **args: Any
    ):
        return make_service(catalog, d4_preset, d4_fits, states, clients, **args)

    return build


def d4_clients(critic_replies: list[Reply] | None = None) -> dict[str, FakeModelClient]:
    return {
        GEN: FakeModelClient(GEN, [Reply("draft"), Reply("revision 1"), Reply("revision 2")]),
        CRITIC: FakeModelClient(
            CRITIC, critic_replies or [Reply('{"verdict":"needs_revision","problems":"x"}')]
        ),
    }


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": USER, **fields})


# ---------------------------------------------------------------- routing to models and pipelines


async def test_unknown_model_is_a_404_naming_param_model(d4) -> None:
    service, *_ = d4()
    with pytest.raises(ModelNotFound) as caught:
        await service.chat(chat(model="gpt-4o"), "req-1")
    error = caught.value
    assert (error.status, error.param, error.code) == (404, "model", "model_not_found")
    assert "not in the catalog" in error.message and GEN in error.message
    with pytest.raises(ModelNotFound):
        await service.completion(CompletionRequest(model="gpt-4o", prompt="x"), "req-2")


async def test_catalog_model_outside_the_preset_is_a_404_with_a_hint(d4) -> None:
    service, *_ = d4()
    with pytest.raises(ModelNotFound, match="in the catalog but not deployed by preset D4"):
        await service.chat(chat(model="phi-4"), "req-1")


async def test_plain_model_without_orchestration_is_a_single_call(d4) -> None:
    service, _, clients, _ = d4()
    response = await service.chat(chat(model=GEN), "req-1")
    assert isinstance(response, ChatCompletionResponse)
    assert response.orchestration is None
    assert response.choices[0].message.content == f"answer of {GEN}"
    assert [rid for _, rid in clients[GEN].requests] == ["req-1"]
    assert clients[CRITIC].requests == []


async def test_the_preset_name_without_orchestration_runs_the_preset_mode(d4) -> None:
    service, _, _, metrics = d4(clients=d4_clients())
    response = await service.chat(chat(model="D4"), "req-1")
    info = response.orchestration
    assert info is not None and info.mode == "critique"
    assert info.models_used == [GEN, CRITIC, GEN, CRITIC, GEN]  # critique_max_rounds: 2 from D4.yaml
    assert response.model == "D4"
    assert response.choices[0].message.content == "revision 2"
    assert metrics.named("pipeline_finished")[0][:2] == ("critique", 2)


async def test_empty_orchestration_object_means_the_preset_default(d4) -> None:
    service, *_ = d4(clients=d4_clients())
    response = await service.chat(chat(model=GEN, orchestration={}), "req-1")
    assert response.orchestration is not None and response.orchestration.mode == "critique"


async def test_orchestration_rounds_override_the_preset(d4) -> None:
    service, *_ = d4(clients=d4_clients())
    response = await service.chat(chat(model="D4", orchestration={"rounds": 1}), "req-1")
    assert response.orchestration.models_used == [GEN, CRITIC, GEN]


async def test_single_mode_on_the_preset_name_uses_the_generator(d4) -> None:
    service, _, clients, _ = d4()
    response = await service.chat(chat(model="D4", orchestration_mode="single"), "req-1")
    assert response.orchestration is None
    sent, _ = clients[GEN].requests[0]
    assert sent.model == GEN
    assert clients[CRITIC].requests == []


async def test_roles_can_be_swapped_per_request(d4) -> None:
    service, *_ = d4(clients=d4_clients())
    response = await service.chat(
        chat(model="D4", orchestration={"mode": "critique", "rounds": 1, "generator": CRITIC, "critic": GEN}),
        "req-1",
    )
    assert response.orchestration.models_used == [CRITIC, GEN, CRITIC]


async def test_ensemble_defaults_to_the_preset_models_judged_by_the_critic(d4) -> None:
    clients = {
        GEN: FakeModelClient(GEN, [Reply("qwen answer")]),
        CRITIC: FakeModelClient(CRITIC, [Reply("deepseek answer"), Reply('{"winner":1,"reason":"concise"}')]),
    }
    service, *_ = d4(clients=clients)
    response = await service.chat(chat(model="D4", orchestration={"mode": "ensemble"}), "req-1")
    info = response.orchestration
    assert info.mode == "ensemble"
    assert [(s.role, s.model) for s in info.steps] == [
        ("candidate", CRITIC),
        ("candidate", GEN),
        ("judge", CRITIC),
    ]
    assert response.choices[0].message.content == "deepseek answer" and info.reason == "concise"


async def test_unknown_critic_is_a_404_naming_the_critic(d4) -> None:
    service, *_ = d4()
    with pytest.raises(ModelNotFound) as caught:
        await service.chat(chat(model="D4", orchestration={"critic": "no-such-model"}), "req-1")
    assert (caught.value.status, caught.value.param) == (404, "orchestration.critic")


async def test_unknown_judge_and_candidate_are_404s_naming_them(d4) -> None:
    service, *_ = d4()
    with pytest.raises(ModelNotFound) as caught:
        await service.chat(chat(model="D4", orchestration={"mode": "ensemble", "judge": "nope"}), "r")
    assert caught.value.param == "orchestration.judge"
    with pytest.raises(ModelNotFound) as caught:
        await service.chat(chat(model="D4", orchestration={"mode": "ensemble", "models": [GEN, "nope"]}), "r")
    assert caught.value.param == "orchestration.models"


async def test_critic_not_ready_is_a_400(d4) -> None:
    service, _, clients, _ = d4(states={GEN: "ready", CRITIC: "loading"})
    with pytest.raises(InvalidRequest) as caught:
        await service.chat(chat(model="D4"), "req-1")
    error = caught.value
    assert (error.status, error.param, error.code) == (400, "orchestration.critic", "model_not_ready")
    assert "loading" in error.message
    assert clients[GEN].requests == [], "no step may run when a role model is not ready"


async def test_pipelines_reject_n_above_one_and_logprobs(d4) -> None:
    service, *_ = d4()
    with pytest.raises(InvalidRequest) as caught:
        await service.chat(chat(model="D4", n=2), "req-1")
    assert (caught.value.status, caught.value.param) == (400, "n")
    with pytest.raises(InvalidRequest) as caught:
        await service.chat(chat(model="D4", orchestration={"mode": "critique"}, logprobs=True), "req-1")
    assert caught.value.param == "logprobs"


async def test_n_above_one_is_fine_for_a_single_model(d4) -> None:
    service, _, clients, _ = d4()
    await service.chat(chat(model=GEN, n=2), "req-1")
    assert clients[GEN].requests[0][0].n == 2


async def test_critique_on_a_preset_without_roles_needs_named_models(catalog: Catalog) -> None:
    preset = load_preset(PRESETS_DIR, "single-phi-4", catalog)
    service, *_ = make_service(catalog, preset, check_preset_fits(preset, catalog))
    with pytest.raises(InvalidRequest) as caught:
        await service.chat(chat(model="phi-4", orchestration={"mode": "critique"}), "req-1")
    assert (caught.value.param, caught.value.code) == ("orchestration.mode", "mode_unavailable")
    with pytest.raises(InvalidRequest) as caught:
        await service.chat(chat(model="phi-4", orchestration={"mode": "ensemble"}), "req-1")
    assert caught.value.param == "orchestration.models"


async def test_a_single_preset_addressed_by_name_is_its_model(catalog: Catalog) -> None:
    preset = load_preset(PRESETS_DIR, "single-phi-4", catalog)
    service, _, clients, _ = make_service(catalog, preset, check_preset_fits(preset, catalog))
    response = await service.chat(chat(model="single-phi-4"), "req-1")
    assert isinstance(response, ChatCompletionResponse)
    assert response.orchestration is None
    assert clients["phi-4"].requests[0][0].model == "phi-4"


async def test_unknown_model_with_explicit_orchestration_is_still_a_404(d4) -> None:
    service, *_ = d4(clients=d4_clients())
    with pytest.raises(ModelNotFound):
        await service.chat(chat(model="gpt-4o", orchestration={"mode": "critique", "rounds": 1}), "req-1")


async def test_streaming_single_call_returns_the_models_sse(d4) -> None:
    service, *_ = d4()
    result = await service.chat(chat(model=GEN, stream=True), "req-1")
    assert isinstance(result, AsyncIterator)
    chunks = [sse_json(event) for event in parse_sse([event async for event in result])]
    assert (
        "".join(ch["delta"].get("content", "") for c in chunks for ch in c["choices"]) == f"answer of {GEN}"
    )


async def test_streaming_pipeline_returns_sse_with_orchestration_last(d4) -> None:
    service, *_ = d4(clients=d4_clients())
    result = await service.chat(chat(model="D4", stream=True), "req-1")
    chunks = [sse_json(event) for event in parse_sse([event async for event in result])]
    assert chunks[-1]["orchestration"]["mode"] == "critique"
    assert "".join(ch["delta"].get("content", "") for c in chunks for ch in c["choices"]) == "revision 2"


async def test_completion_goes_to_the_named_model(d4) -> None:
    service, *_ = d4()
    response = await service.completion(CompletionRequest(model=CRITIC, prompt="x"), "req-1")
    assert response.choices[0].text == f"completion of {CRITIC}"
    stream = await service.completion(CompletionRequest(model=GEN, prompt="x", stream=True), "req-2")
    assert isinstance(stream, AsyncIterator) and [e async for e in stream]


# ---------------------------------------------------------------- model state, load and unload


@pytest.fixture
def fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "POLL_S", 0.001)


async def test_load_waits_until_ready(d4, fast_polling: None) -> None:
    service, directory, _, _ = d4(states={GEN: ["unloaded", "loading", "loading", "ready"], CRITIC: "ready"})
    result = await service.load(GEN, wait_s=5)
    assert result.done is True and result.card.status == "ready" and result.card.id == GEN
    assert directory.set_desired_calls == [(GEN, "loaded")]
    assert directory.all_status_calls == 4


async def test_load_that_outlasts_the_wait_is_not_done(d4, fast_polling: None) -> None:
    service, *_ = d4(states={GEN: "loading", CRITIC: "ready"})
    result = await service.load(GEN, wait_s=0)
    assert result.done is False and result.card.status == "loading"


async def test_failed_load_is_a_503_with_the_replica_error(
    catalog: Catalog, d4_preset: Preset, d4_fits
) -> None:
    clients = {m: FakeModelClient(m) for m in d4_preset.models}
    directory = FakeDirectory({GEN: "failed", CRITIC: "ready"}, errors={GEN: "engine failed to start: OOM"})
    service = RequestDispatcher(AppArgs(), catalog, d4_preset, d4_fits, clients, directory)
    with pytest.raises(ServiceUnavailable) as caught:
        await service.load(GEN, wait_s=5)
    assert caught.value.code == "model_load_failed" and "OOM" in caught.value.message


async def test_unload_waits_until_unloaded(d4, fast_polling: None) -> None:
    service, directory, _, _ = d4(states={GEN: ["unloading", "unloaded"], CRITIC: "ready"})
    result = await service.unload(GEN, wait_s=5)
    assert result.done is True and result.card.status == "unloaded"
    assert directory.set_desired_calls == [(GEN, "unloaded")]


async def test_load_of_an_unknown_model_changes_nothing(d4) -> None:
    service, directory, _, _ = d4()
    with pytest.raises(ModelNotFound):
        await service.load("gpt-4o", wait_s=1)
    assert directory.set_desired_calls == []


async def test_list_models_reports_preset_roles_and_state(d4) -> None:
    service, *_ = d4(states={GEN: "ready", CRITIC: "loading"})
    models = await service.list_models()
    assert models.preset == "D4" and models.orchestration_mode == "critique"
    cards = {card.id: card for card in models.data}
    assert list(cards) == [CRITIC, GEN]
    assert (cards[GEN].status, cards[GEN].role, cards[GEN].max_model_len) == ("ready", "generator", 32768)
    assert (cards[CRITIC].status, cards[CRITIC].role) == ("loading", "critic")
    assert cards[GEN].hf_source == "Qwen/Qwen2.5-7B-Instruct"
    assert cards[GEN].replicas == {"ready": 1}


async def test_cpu_profile_reports_the_cpu_context_length(d4) -> None:
    service, *_ = d4(profile="cpu")
    card = await service.get_model(GEN)
    assert card.max_model_len == AppArgs().cpu.max_model_len


async def test_model_status_is_cached_briefly(d4) -> None:
    service, directory, _, _ = d4()
    await service.list_models()
    await service.get_model(GEN)
    await service.list_models()
    assert directory.all_status_calls == 1


async def test_readiness(d4) -> None:
    service, *_ = d4()
    assert await service.readiness() == {CRITIC: "ready", GEN: "ready"}
    not_ready, *_ = d4(states={GEN: "ready", CRITIC: "loading"})
    with pytest.raises(ServiceUnavailable) as caught:
        await not_ready.readiness()
    assert caught.value.status == 503 and caught.value.code == "not_ready"


async def test_a_model_unloaded_on_purpose_does_not_make_the_service_unready(d4) -> None:
    service, directory, *_ = d4(states={GEN: "ready", CRITIC: "unloaded"})
    directory.desired[CRITIC] = "unloaded"
    assert await service.readiness() == {CRITIC: "unloaded", GEN: "ready"}
    # Still unloading, or unloaded while it should be loaded: not ready.
    unloading, unloading_directory, *_ = d4(states={GEN: "ready", CRITIC: "unloading"})
    unloading_directory.desired[CRITIC] = "unloaded"
    lost, *_ = d4(states={GEN: "ready", CRITIC: "unloaded"})
    for service_not_ready in (unloading, lost):
        with pytest.raises(ServiceUnavailable):
            await service_not_ready.readiness()


async def test_preset_info(d4) -> None:
    service, *_ = d4()
    info = service.preset_info("D4")
    assert info["name"] == "D4" and info["profile"] == "gpu"
    assert [f["model_id"] for f in info["fit"]] == [CRITIC, GEN]
    assert all(f["spare_gb"] > 0 for f in info["fit"])
    with pytest.raises(InvalidRequest) as caught:
        service.preset_info("single-phi-4")
    assert (caught.value.param, caught.value.code) == ("preset", "not_running")


async def test_load_and_unload_routes_poll_the_directory(d4, fast_polling: None) -> None:
    service, directory, _, _ = d4(
        states={GEN: "loading", CRITIC: ["ready", "ready", "unloading", "unloaded"]}
    )
    transport = httpx.ASGITransport(app=build_api(service, KeyPolicy()))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        pending = await client.post(f"/v1/models/{GEN}/load?wait=0")
        assert pending.status_code == 202
        assert pending.json()["id"] == GEN and pending.json()["status"] == "loading"
        done = await client.post(f"/v1/models/{CRITIC}/unload?wait=5")
        assert done.status_code == 200 and done.json()["status"] == "unloaded"
        missing = await client.post("/v1/models/gpt-4o/load")
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    assert directory.set_desired_calls == [(GEN, "loaded"), (CRITIC, "unloaded")]


async def test_stale_model_status_is_served_while_it_refreshes(d4, monkeypatch: pytest.MonkeyPatch) -> None:
    service, directory, _, _ = d4(states={GEN: ["ready", "unloaded"], CRITIC: "ready"})
    assert (await service.get_model(GEN)).status == "ready"
    monkeypatch.setattr(service_module, "STATUS_CACHE_S", 0.0)
    # Stale: answered from the copy at once, while one background refresh asks the directory.
    assert (await service.get_model(GEN)).status == "ready"
    assert (await service.get_model(GEN)).status == "ready"
    await asyncio.sleep(0.01)
    assert directory.all_status_calls == 2
    assert (await service.get_model(GEN)).status == "unloaded"


async def test_too_old_model_status_is_waited_for(d4, monkeypatch: pytest.MonkeyPatch) -> None:
    service, directory, _, _ = d4(states={GEN: ["ready", "unloaded"], CRITIC: "ready"})
    await service.get_model(GEN)
    monkeypatch.setattr(service_module, "STATUS_STALE_MAX_S", 0.0)
    assert (await service.get_model(GEN)).status == "unloaded"
    assert directory.all_status_calls == 2
