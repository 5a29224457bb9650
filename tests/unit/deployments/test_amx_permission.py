"""deployments/amx_permission.py: asking for AMX is safe everywhere and says whether AMX is usable."""

from __future__ import annotations

from pathlib import Path

from deployments.amx_permission import AMX_GRANTED, AmxPermissionExtension, request_amx_permission


def _cpu_flags() -> set[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return {flag for line in lines if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def test_request_returns_a_bool_without_raising() -> None:
    granted = request_amx_permission()
    assert isinstance(granted, bool)
    if "amx_tile" not in _cpu_flags():
        assert granted is False
    assert request_amx_permission() == granted  # asking twice is harmless
    assert granted == AMX_GRANTED


def test_worker_extension_reports_pid_and_permission() -> None:
    import os

    pid, granted = AmxPermissionExtension().amx_permission_status()
    assert pid == os.getpid() and granted == request_amx_permission()
