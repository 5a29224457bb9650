"""Helpers of the system tests: find the cluster's processes, run scripts/cluster.sh and the serve CLI,
wait for models. See conftest.py for what the system tests are and need."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
import yaml
from integration.support import MODEL_LOAD_TIMEOUT, REQUIRE_SERVICE

PROJECT_ROOT = Path(__file__).resolve().parents[2]
APP = os.environ.get("INFERENCE_APP_NAME", "inference")
SERVE_CONFIG = Path(
    os.environ.get("INFERENCE_SERVE_CONFIG")
    or os.environ.get("SERVE_CONFIG")
    or PROJECT_ROOT / "tests" / "serve_config.test.yaml"
)
if not SERVE_CONFIG.is_absolute():
    SERVE_CONFIG = PROJECT_ROOT / SERVE_CONFIG
RUN_DIR = PROJECT_ROOT / os.environ.get("RUN_DIR", ".run")
DEPLOY_TIMEOUT_S = float(os.environ.get("CLUSTER_READY_TIMEOUT", "900"))


def skip_or_fail(message: str) -> None:
    """Skip, or fail when INFERENCE_REQUIRE_SERVICE=1 says the service must be testable here."""
    if REQUIRE_SERVICE:
        pytest.fail(message + " (INFERENCE_REQUIRE_SERVICE=1)", pytrace=False)
    pytest.skip(message)


# ---------------------------------------------------------------- locality


def is_local_url(url: str) -> bool:
    """Whether the URL's host is this machine (a loopback address or one of its interfaces)."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {str(info[4][0]).split("%")[0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    mine = {str(a.address).split("%")[0] for nic in psutil.net_if_addrs().values() for a in nic}
    return any(ipaddress.ip_address(a).is_loopback or a in mine for a in addresses)


# ---------------------------------------------------------------- processes


def _title(process: psutil.Process) -> str:
    try:
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""
    return cmdline[0] if cmdline else ""


def replica_processes(deployment: str, app: str = APP) -> list[psutil.Process]:
    """Live Ray worker processes of a Serve replica: title `ray::ServeReplica:<app>:<deployment>`."""
    marker = f"ray::ServeReplica:{app}:{deployment}"
    found = []
    for process in psutil.process_iter():
        title = _title(process)
        if title == marker or title.startswith(marker + "."):
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
            except psutil.NoSuchProcess:
                continue
    return found


def one_replica(deployment: str, app: str = APP, settle_s: float = 10.0) -> psutil.Process:
    """The deployment's one replica process.

    Scanned again for up to `settle_s`: Ray rewrites a worker's title in place at the start and
    end of every task (`ray::ServeReplica:<app>:<deployment>.<method>`), and a read that lands
    while it does so sees a partial title. CI once found no replica that way right after a
    redeploy (tests/system/test_unload_memory.py, 2026-11-28).
    """
    deadline = time.monotonic() + settle_s
    replicas = replica_processes(deployment, app)
    while len(replicas) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        replicas = replica_processes(deployment, app)
    assert len(replicas) == 1, f"expected one replica process of {app}:{deployment}, found {replicas}"
    return replicas[0]


def engine_cores(replica: psutil.Process) -> list[psutil.Process]:
    """The replica's live vLLM engine-core child processes (title `VLLM::EngineCore`)."""
    try:
        children = replica.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    cores = []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if "EngineCore" in child.name() or "EngineCore" in _title(child):
                cores.append(child)
        except psutil.NoSuchProcess:
            continue
    return cores


def tree_rss_mb(process: psutil.Process) -> float:
    """Resident memory of a process and its descendants, in MB."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def replica_pids(config: dict[str, Any], scans: int = 3) -> dict[str, int | None]:
    """`app:deployment` -> replica PID for every deployment of the config's apps (None: not found).

    The union of a few scans, because a title read mid-rewrite is missed (see `one_replica`).
    """
    pids: dict[str, int | None] = {}
    for scan in range(scans):
        if scan:
            time.sleep(0.2)
        for key, pid in _replica_pids_once(config).items():
            pids.setdefault(key, pid)
    return pids


def _replica_pids_once(config: dict[str, Any]) -> dict[str, int | None]:
    pids: dict[str, int | None] = {}
    for process in psutil.process_iter():
        title = _title(process)
        if title.startswith("ray::ServeReplica:"):
            app, _, deployment = title[len("ray::ServeReplica:") :].partition(":")
            if app in {a["name"] for a in config["applications"]}:
                pids[f"{app}:{_without_method(deployment)}"] = process.pid
    return pids


def _without_method(deployment: str) -> str:
    """`qwen2.5-7b.handle_request` -> `qwen2.5-7b`: the title names the running method too (the
    catalog's ids have dots, but none ends in an identifier)."""
    name, dot, method = deployment.rpartition(".")
    return name if dot and method.isidentifier() else deployment


def app_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The application `name` of a serve config."""
    return next(a for a in config["applications"] if a["name"] == name)


# ---------------------------------------------------------------- cluster.sh and serve CLI


def cluster_env(config: Path) -> dict[str, str]:
    """The environment `scripts/cluster.sh deploy` needs for `config`: one readiness path per app."""
    apps = yaml.safe_load(config.read_text())["applications"]
    ready = " ".join(f"{a.get('route_prefix', '/').rstrip('/')}/health/ready" for a in apps)
    return {**os.environ, "SERVE_CONFIG": str(config), "READY_PATHS": ready}


def _serve_cli_env() -> dict[str, str]:
    token = RUN_DIR / "ray_auth_token"
    env = {**os.environ, "PATH": f"{PROJECT_ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"}
    env.update(RAY_USAGE_STATS_ENABLED="0")
    if token.is_file():
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    return env


async def run(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args, cwd=PROJECT_ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, out.decode(errors="replace")


async def deploy(config: Path) -> float:
    """`scripts/cluster.sh deploy` with `config`; returns the seconds until Serve ran every app and
    every app was ready."""
    started = time.monotonic()
    command = ["bash", "scripts/cluster.sh", "deploy"]
    code, out = await run(command, cluster_env(config), DEPLOY_TIMEOUT_S + 60)
    assert code == 0, f"cluster.sh deploy {config} failed ({code}):\n{out[-3000:]}"
    return time.monotonic() - started


async def running_config() -> list[dict[str, Any]]:
    """The applications the cluster runs now, as `serve config` reports them."""
    code, out = await run(["serve", "config"], _serve_cli_env(), 120)
    assert code == 0, f"serve config failed ({code}): {out[-2000:]}"
    return [doc for doc in yaml.safe_load_all(out) if doc]


def comparable_apps(apps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Applications by name, reduced to what a deploy sets (as opposed to what Serve adds)."""
    keys = ("name", "route_prefix", "import_path", "args")
    return {app["name"]: {k: app.get(k) for k in keys} for app in apps}


async def running_apps() -> dict[str, dict[str, Any]]:
    """`comparable_apps` of what the cluster runs now."""
    return comparable_apps(await running_config())


async def require_running(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Skip (or fail under INFERENCE_REQUIRE_SERVICE) unless the cluster runs exactly `config`'s
    applications: a test must not redeploy over someone else's cluster. Returns them, comparable."""
    running, expected = await running_apps(), comparable_apps(config["applications"])
    if running != expected:
        skip_or_fail(f"the cluster does not run {SERVE_CONFIG}; refusing to redeploy over it: {running}")
    return expected


async def wait_ready(http: httpx.AsyncClient, models: list[str], timeout: float = MODEL_LOAD_TIMEOUT) -> None:
    """Until every model's card says ready and it answers a short chat request."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            cards = {c["id"]: c for c in (await http.get("/v1/models")).json()["data"]}
            pending = [m for m in models if cards.get(m, {}).get("status") != "ready"]
            if not pending:
                answers = [await http.post("/v1/chat/completions", json=short_chat(m)) for m in models]
                if all(a.status_code == 200 for a in answers):
                    return
                last = f"answers {[a.status_code for a in answers]}"
            else:
                last = f"not ready: {pending}"
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last = repr(exc)
        await asyncio.sleep(2)
    pytest.fail(f"models {models} not ready within {timeout:.0f}s ({last})", pytrace=False)


def short_chat(model: str, max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": max_tokens,
        **extra,
    }


def long_stream(model: str, max_tokens: int, n: int = 1) -> dict[str, Any]:
    # ignore_eos: the random-weight test model would otherwise stop at a random point.
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": max_tokens,
        "n": n,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
