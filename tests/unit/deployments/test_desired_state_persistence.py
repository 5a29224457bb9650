"""The ModelDirectory's desired states outlive its replica (deployments/model_directory.py,
ModelDirectoryState with a DesiredStateStore): a directory restarted by a redeploy starts from the
stored states; ids the app no longer has are ignored; a failing store never breaks serving."""

from __future__ import annotations

import asyncio
import logging

import pytest

from deployments.model_directory import ModelDirectoryState

from ..fakes import FakeDesiredStateStore


async def _directory(model_ids: list[str], store: FakeDesiredStateStore) -> ModelDirectoryState:
    """A directory as its replica starts: restored from the store before it answers anyone."""
    state = ModelDirectoryState(model_ids, store)
    await state.restore()
    return state


async def test_a_restarted_directory_keeps_an_unloaded_model_unloaded() -> None:
    store = FakeDesiredStateStore()
    before = await _directory(["a", "b"], store)
    await before.set_desired("a", "unloaded")
    assert store.stored == {"a": "unloaded"}

    after = await _directory(["a", "b"], store)  # the redeploy's new directory replica
    assert after.desired == {"a": "unloaded", "b": "loaded"}
    # A model replica starting under the new directory is told to stay unloaded.
    assert after.report("a", "r-new", "unloaded", None) == "unloaded"
    assert after.status("a").state == "unloaded"
    assert after.report("b", "r-new", "loading", None) == "loaded"


async def test_load_after_unload_is_kept_too() -> None:
    store = FakeDesiredStateStore()
    before = await _directory(["a"], store)
    await before.set_desired("a", "unloaded")
    await before.set_desired("a", "loaded")
    assert (await _directory(["a"], store)).desired == {"a": "loaded"}


async def test_ids_the_app_no_longer_has_are_ignored_and_forgotten() -> None:
    store = FakeDesiredStateStore({"gone": "unloaded", "a": "unloaded"})
    state = await _directory(["a", "new"], store)
    assert state.desired == {"a": "unloaded", "new": "loaded"}  # a new model starts loaded
    assert "gone" not in state.desired and "gone" not in state.reports
    # Forgotten, so that the model starts loaded like any new one if a later preset has it again.
    assert store.stored == {"a": "unloaded"}
    assert (await _directory(["gone"], store)).desired == {"gone": "loaded"}


async def test_a_stored_value_that_is_no_desired_state_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeDesiredStateStore({"a": "sleeping", "b": "unloaded"})
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        state = await _directory(["a", "b"], store)
    assert state.desired == {"a": "loaded", "b": "unloaded"}
    assert "ignoring stored desired state 'sleeping' of a" in caplog.text


async def test_an_unreadable_store_at_start_means_loaded_and_is_read_again_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeDesiredStateStore({"a": "unloaded"})
    store.failing = True
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        state = await _directory(["a"], store)  # does not raise: the directory starts
    assert state.desired == {"a": "loaded"}
    assert "reading desired states failed" in caplog.text
    assert state.status("a").desired == "loaded"

    store.failing = False
    await state.sync()  # the directory's periodic sync, once the GCS answers again
    assert state.desired == {"a": "unloaded"}
    assert store.stored == {"a": "unloaded"}  # nothing was pruned while it could not be read


async def test_a_failed_write_still_unloads_and_is_written_once_the_store_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeDesiredStateStore()
    state = await _directory(["a"], store)
    store.failing = True
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        await state.set_desired("a", "unloaded")  # does not raise: the unload is answered
    assert "keeping the desired state unloaded of a failed" in caplog.text
    assert state.report("a", "r1", "ready", None) == "unloaded"  # in force here at once
    assert state.unsaved == {"a"}

    await state.sync()  # still down: the state in memory stays
    assert state.desired == {"a": "unloaded"}

    store.failing = False
    store.stored["a"] = "loaded"  # what the store held before the failed write
    await state.sync()  # written again, not overwritten by the stale stored value
    assert state.desired == {"a": "unloaded"} and store.stored == {"a": "unloaded"}
    assert state.unsaved == set()
    assert (await _directory(["a"], store)).desired == {"a": "unloaded"}


async def test_an_unload_during_a_sync_read_is_not_undone_by_it() -> None:
    store = FakeDesiredStateStore({"a": "loaded"})
    state = await _directory(["a"], store)
    store.hold_reads = True
    store.read_started.clear()
    sync = asyncio.create_task(state.sync())
    await asyncio.wait_for(store.read_started.wait(), 5)  # the read has its snapshot: "loaded"
    unload = asyncio.create_task(state.set_desired("a", "unloaded"))
    await asyncio.sleep(0)
    assert state.report("a", "r1", "ready", None) == "unloaded"  # in force before it is stored
    store.release_reads()
    await asyncio.wait_for(asyncio.gather(sync, unload), 5)
    assert state.desired == {"a": "unloaded"}
    assert store.stored == {"a": "unloaded"}


async def test_another_directorys_change_is_adopted_at_the_next_sync() -> None:
    """During a redeploy the old directory replica may still take an unload after the new one
    started: the new one adopts it from the store."""
    store = FakeDesiredStateStore()
    new = await _directory(["a"], store)
    old = await _directory(["a"], store)
    await old.set_desired("a", "unloaded")
    assert new.desired == {"a": "loaded"}
    await new.sync()
    assert new.desired == {"a": "unloaded"}


async def test_without_a_store_the_state_is_in_memory_only() -> None:
    state = ModelDirectoryState(["a"])
    await state.restore()
    await state.set_desired("a", "unloaded")
    assert state.desired == {"a": "unloaded"} and state.unsaved == set()


class FakeGcsClient:
    """The async key-value calls of Ray's GcsClient (ray._raylet.InnerGcsClient, same signatures)
    over one dict per namespace."""

    def __init__(self) -> None:
        self.kv: dict[bytes | None, dict[bytes, bytes]] = {}

    async def async_internal_kv_keys(
        self, prefix: bytes, namespace: bytes | None = None, timeout: float | None = None
    ) -> list[bytes]:
        return [k for k in self.kv.get(namespace, {}) if k.startswith(prefix)]

    async def async_internal_kv_multi_get(
        self, keys: list[bytes], namespace: bytes | None = None, timeout: float | None = None
    ) -> dict[bytes, bytes]:
        space = self.kv.get(namespace, {})
        return {k: space[k] for k in keys if k in space}

    async def async_internal_kv_put(
        self,
        key: bytes,
        value: bytes,
        overwrite: bool = False,
        namespace: bytes | None = None,
        timeout: float | None = None,
    ) -> bool:
        space = self.kv.setdefault(namespace, {})
        new = key not in space
        if new or overwrite:
            space[key] = value
        return new

    async def async_internal_kv_del(
        self, key: bytes, del_by_prefix: bool, namespace: bytes | None = None, timeout: float | None = None
    ) -> int:
        return 1 if self.kv.get(namespace, {}).pop(key, None) is not None else 0


async def test_the_gcs_store_keeps_each_app_apart() -> None:
    from deployments.desired_state_store import KV_NAMESPACE, GcsDesiredStateStore

    gcs = FakeGcsClient()
    plain, nested = GcsDesiredStateStore("tight", gcs), GcsDesiredStateStore("tight/x", gcs)
    await plain.write("llama-3.2-3b", "unloaded")
    await nested.write("qwen2.5-7b", "unloaded")
    await nested.write("llama-3.2-3b", "loaded")
    assert await plain.read_all() == {"llama-3.2-3b": "unloaded"}
    assert await nested.read_all() == {"qwen2.5-7b": "unloaded", "llama-3.2-3b": "loaded"}
    assert set(gcs.kv) == {KV_NAMESPACE}  # not Serve's own namespace
    await nested.delete("qwen2.5-7b")
    assert await nested.read_all() == {"llama-3.2-3b": "loaded"}
    assert await GcsDesiredStateStore("other", gcs).read_all() == {}
