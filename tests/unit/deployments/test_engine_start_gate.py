"""deployments/engine/start_gate.py and gpu_driver.py: engine starts on one device never overlap, the
lock dies with its holder, the CPU profile takes the same gate, and an old NVIDIA driver is refused
with a clear message before anything touches CUDA."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deployments.engine import start_gate as engine_start_gate
from deployments.engine.gpu_driver import (
    MIN_DRIVER_MAJOR,
    GpuDriverError,
    check_gpu_driver,
    read_driver_nvidia_smi,
)
from deployments.engine.start_gate import DeviceLock, device_keys, engine_start_slot

REPO = Path(__file__).resolve().parents[3]
DRIVER_OK = "580.65.06"


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_start_gate, "POLL_INTERVAL_S", 0.01)


def _fake_driver(version: str | None):
    return lambda: version


def _refuse_driver_read() -> str | None:
    raise AssertionError("the CPU profile must not read an NVIDIA driver")


def test_device_keys_follow_what_ray_made_visible() -> None:
    assert device_keys({"CUDA_VISIBLE_DEVICES": "1"}) == ["gpu-1"]
    assert device_keys({"CUDA_VISIBLE_DEVICES": "3,0"}) == ["gpu-0", "gpu-3"]
    assert device_keys({}) == ["gpu-all"]
    assert device_keys({"CUDA_VISIBLE_DEVICES": "0"}, gpu=False) == ["cpu"]


async def _start(
    model_id: str, env: dict[str, str], lock_dir: Path, events: list[str], hold_s: float, *, gpu: bool = True
) -> None:
    reader = _fake_driver(DRIVER_OK) if gpu else _refuse_driver_read
    async with engine_start_slot(model_id, gpu=gpu, env=env, lock_dir=lock_dir, driver_reader=reader):
        events.append(f"start {model_id}")
        await asyncio.sleep(hold_s)
        events.append(f"ready {model_id}")


async def test_two_engines_on_one_gpu_start_one_after_the_other(tmp_path: Path) -> None:
    events: list[str] = []
    same_gpu = {"CUDA_VISIBLE_DEVICES": "0"}
    first = asyncio.create_task(_start("deepseek-r1-7b", same_gpu, tmp_path, events, 0.2))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(_start("qwen2.5-7b", same_gpu, tmp_path, events, 0.0))
    await asyncio.gather(first, second)
    assert events == ["start deepseek-r1-7b", "ready deepseek-r1-7b", "start qwen2.5-7b", "ready qwen2.5-7b"]


async def test_engines_on_different_gpus_start_together(tmp_path: Path) -> None:
    events: list[str] = []
    await asyncio.gather(
        _start("phi-4", {"CUDA_VISIBLE_DEVICES": "0"}, tmp_path, events, 0.1),
        _start("granite-8b-code-128k", {"CUDA_VISIBLE_DEVICES": "1"}, tmp_path, events, 0.1),
    )
    assert events[:2] == ["start phi-4", "start granite-8b-code-128k"]


async def test_the_cpu_profile_takes_the_same_gate_without_a_driver_check(tmp_path: Path) -> None:
    events: list[str] = []
    first = asyncio.create_task(_start("a", {}, tmp_path, events, 0.2, gpu=False))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(_start("b", {}, tmp_path, events, 0.0, gpu=False))
    await asyncio.gather(first, second)
    assert events == ["start a", "ready a", "start b", "ready b"]
    assert (tmp_path / "cpu.lock").is_file()


async def test_a_failed_start_releases_the_lock(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with engine_start_slot("a", gpu=False, lock_dir=tmp_path):
            raise RuntimeError("boom")
    assert DeviceLock(tmp_path, "cpu").try_acquire("b")


async def test_a_waiting_start_can_be_cancelled(tmp_path: Path) -> None:
    holder = DeviceLock(tmp_path, "cpu")
    assert holder.try_acquire("other replica")
    waiter = asyncio.create_task(_start("b", {}, tmp_path, [], 0.0, gpu=False))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    holder.release()


def test_the_lock_dies_with_its_holder_process(tmp_path: Path) -> None:
    # A replica killed mid-start (OOM, Ray's start timeout) must not wedge the node's other engines.
    code = (
        "import sys, time; from pathlib import Path; from deployments.engine.start_gate import DeviceLock; "
        f"assert DeviceLock(Path({str(tmp_path)!r}), 'gpu-0').try_acquire('dying'); "
        "print('held', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        lock = DeviceLock(tmp_path, "gpu-0")
        assert not lock.try_acquire("survivor")
        assert "dying" in lock.holder()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        assert lock.try_acquire("survivor")
        lock.release()
    finally:
        child.kill()
        child.wait(timeout=10)


# ---------------------------------------------------------------- the driver check


@pytest.mark.parametrize("version", ["580.65.06", "580.82.07", "590.44.01"])
def test_a_new_enough_driver_passes(version: str) -> None:
    assert check_gpu_driver(_fake_driver(version)) == version


@pytest.mark.parametrize("version", ["535.230.02", "570.172.08", "575.57.08"])
def test_an_old_driver_is_refused_with_the_fix(version: str) -> None:
    with pytest.raises(GpuDriverError) as caught:
        check_gpu_driver(_fake_driver(version))
    message = str(caught.value)
    assert version in message and f"R{MIN_DRIVER_MAJOR}" in message and "CUDA 13" in message


def test_no_driver_is_refused() -> None:
    with pytest.raises(GpuDriverError, match="no NVIDIA driver found"):
        check_gpu_driver(_fake_driver(None))
    with pytest.raises(GpuDriverError, match="unreadable"):
        check_gpu_driver(_fake_driver("garbage"))


async def test_the_gate_checks_the_driver_before_taking_the_lock(tmp_path: Path) -> None:
    with pytest.raises(GpuDriverError):
        async with engine_start_slot(
            "phi-4",
            gpu=True,
            env={"CUDA_VISIBLE_DEVICES": "0"},
            lock_dir=tmp_path,
            driver_reader=_fake_driver("550.163.01"),
        ):
            pytest.fail("the engine must not start on an old driver")
    assert not (tmp_path / "gpu-0.lock").exists()


def test_nvidia_smi_output_is_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in nvidia-smi on PATH, printing what the real one prints for --query-gpu on 2 GPUs.
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '580.95.05\\n580.95.05\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert read_driver_nvidia_smi() == "580.95.05"
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert read_driver_nvidia_smi() is None
