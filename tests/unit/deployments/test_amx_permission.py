"""deployments/engine/amx_permission.py: asking for AMX is safe everywhere and says whether AMX is usable."""

from __future__ import annotations

from pathlib import Path

from deployments.engine.amx_permission import AMX_GRANTED, AmxPermissionExtension, request_amx_permission


def _cpu_flags() -> set[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return {flag for line in lines if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def test_permission_is_granted_exactly_where_the_cpu_has_amx() -> None:
    # Linux (5.16+) grants AMX tile data to any process that asks on a CPU with AMX, and refuses
    # it (EINVAL) without AMX: the answer follows the CPU, not what the function returned before.
    expected = "amx_tile" in _cpu_flags()
    assert request_amx_permission() is expected
    assert request_amx_permission() is expected, "asking twice changes nothing"
    assert AMX_GRANTED is expected, "the import-time request agrees"


def test_worker_extension_reports_its_own_pid_and_the_cpu_s_answer() -> None:
    import os

    pid, granted = AmxPermissionExtension().amx_permission_status()
    assert pid == os.getpid()
    assert granted is ("amx_tile" in _cpu_flags())
