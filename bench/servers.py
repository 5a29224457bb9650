"""Start, wait for and stop the two systems: bare vLLM's OpenAI server and this cluster.

Bare vLLM's flags are derived from the cluster's own builder (`deployments.app.engine_config` and
`actor_options`) for the same config and model id, so both run identical engine settings.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "serve_config.cpu.yaml"


class ServerError(RuntimeError):
    pass


def app_args(config_path: Path) -> Any:
    """The AppArgs of the config's application served at `/`."""
    from serve_app.config import AppArgs

    raw = yaml.safe_load(config_path.read_text())
    apps = [a for a in raw.get("applications", []) if a.get("route_prefix", "/") == "/"]
    if not apps:
        raise ServerError(f"{config_path} has no application at route_prefix /")
    return AppArgs.model_validate(apps[0].get("args") or {})


def bare_vllm_command(config_path: Path, model_id: str, port: int, api_key: str | None) -> tuple[list, dict]:
    """argv and extra environment for `vllm serve` with the cluster's engine settings."""
    from deployments.app import actor_options, engine_config
    from deployments.engine.vllm_engine import AMX_EXTENSION
    from serve_app.config import load_catalog

    args = app_args(config_path)
    spec = load_catalog(args.resolve(args.catalog_path)).get(model_id)
    config = engine_config(spec, args)
    options = actor_options(spec, args)
    env = dict(options.get("runtime_env", {}).get("env_vars", {}))
    # Ray gives every worker OMP_NUM_THREADS = its num_cpus unless set; the same for bare vLLM, or
    # its engine gets another OpenMP thread count than the cluster's.
    env.setdefault("OMP_NUM_THREADS", str(max(1, int(options.get("num_cpus", 1)))))
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        config.model_path,
        "--served-model-name",
        config.served_model_id,
        "--dtype",
        config.dtype,
        "--max-model-len",
        str(config.max_model_len),
        "--gpu-memory-utilization",
        str(config.gpu_memory_utilization),
        "--seed",
        str(config.seed),
    ]
    if config.enforce_eager:
        argv.append("--enforce-eager")
    if config.cpu:
        argv += ["--worker-extension-cls", AMX_EXTENSION]
    if config.quantization:
        argv += ["--quantization", config.quantization]
    if getattr(config, "stream_interval", 1) != 1:
        argv += ["--stream-interval", str(config.stream_interval)]
    if config.reasoning_parser:
        argv += ["--reasoning-parser", config.reasoning_parser]
    if api_key:
        argv += ["--api-key", api_key]
    return argv, env


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, alive: Callable[[], bool]) -> float:
    started = time.monotonic()
    while not check():
        if not alive():
            raise ServerError(f"{what}: the process exited before it was ready")
        if time.monotonic() - started > timeout_s:
            raise ServerError(f"{what}: not ready after {timeout_s:.0f} s")
        time.sleep(1.0)
    return time.monotonic() - started


def serves_model(base_url: str, model_id: str, api_key: str | None, ready_path: str | None = None) -> bool:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        if ready_path and httpx.get(base_url + ready_path, timeout=5).status_code != 200:
            return False
        models = httpx.get(base_url + "/v1/models", headers=headers, timeout=5)
        return models.status_code == 200 and any(m.get("id") == model_id for m in models.json()["data"])
    except (httpx.HTTPError, ValueError, KeyError):
        return False


# Ray starts its worker processes (Serve replicas and the vLLM engines they spawn) at this niceness
# (`RAY_worker_niceness`); bare vLLM runs at the same by default so that neither system is favoured
# when it shares the CPUs with the load generator.
RAY_WORKER_NICENESS = 15


class BareVllm:
    """`python -m vllm.entrypoints.openai.api_server` in its own process group (the caller's
    session), log to a file."""

    def __init__(
        self,
        config_path: Path,
        model_id: str,
        port: int,
        api_key: str | None,
        log_path: Path,
        niceness: int = RAY_WORKER_NICENESS,
    ):
        self.model_id, self.port, self.api_key, self.log_path = model_id, port, api_key, log_path
        self.niceness = niceness
        self.argv, self.env = bare_vllm_command(config_path, model_id, port, api_key)
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    def start(self, timeout_s: float = 900) -> None:
        if port_open(self.port):
            raise ServerError(f"port {self.port} is already in use; pick another with --bare-port")
        env = {**os.environ, **self.env, "PYTHONPATH": str(PROJECT_ROOT)}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=self._own_group_reniced,
            )
        try:
            self.startup_s = wait_until(
                lambda: serves_model(self.url, self.model_id, self.api_key, "/health"),
                timeout_s,
                f"bare vLLM (log {self.log_path})",
                lambda: self.proc is not None and self.proc.poll() is None,
            )
        except ServerError:
            sys.stderr.write(tail(self.log_path))
            raise

    def _own_group_reniced(self) -> None:  # runs in the child before exec
        # Its own process group, so that stop() reaches the engine core and workers too, but not
        # its own session: with the kernel's autogroup scheduling a new session is a new
        # scheduling group, and there, at nice 15, vLLM's busy-polling engine core starved the
        # API server, which then sent most streams in one burst at the end (docs/benchmarks.md).
        os.setpgid(0, 0)
        os.nice(max(0, self.niceness - os.nice(0)))  # the parent may be niced already

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # vLLM's engine core and workers are in the same session; make sure none is left behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


class Cluster:
    """This cluster, started with scripts/cluster.sh (and stopped again), or an external one."""

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        preset: str,
        config_path: Path,
        log_path: Path,
        port: int = 8085,
    ):
        self.external = url is not None
        self.url = (url or f"http://127.0.0.1:{port}").rstrip("/")
        self.api_key, self.preset, self.config_path, self.log_path = api_key, preset, config_path, log_path
        self.port = port
        self.started = False
        self.startup_s: float | None = None

    def _script(self, action: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SERVE_CONFIG": str(self.config_path), "INFERENCE_PORT": str(self.port)}
        env["INFERENCE_DEFAULT_PRESET"] = self.preset
        if self.api_key:
            env["INFERENCE_API_KEY"] = self.api_key
        return subprocess.run(
            ["bash", "scripts/cluster.sh", action],
            cwd=PROJECT_ROOT,
            env=env,
            text=True,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )

    def start(self, timeout_s: float = 1200) -> None:
        if self.external:
            return
        if port_open(self.port) or ray_running():
            raise ServerError(
                f"a Ray cluster or something on :{self.port} is already running; stop it, or measure "
                "it with --cluster-url (it is then neither redeployed nor stopped)"
            )
        self.started = True  # from here on, stop() must run even if start fails halfway
        began = time.monotonic()
        done = self._script("start", timeout_s)
        self.log_path.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise ServerError(f"scripts/cluster.sh start failed:\n{tail(self.log_path)}")
        self.startup_s = time.monotonic() - began

    def check(self, model_id: str) -> None:
        if not serves_model(self.url, model_id, self.api_key):
            raise ServerError(f"the cluster at {self.url} does not serve {model_id} (or the key is wrong)")

    def stop(self) -> None:
        if self.started:
            self.started = False
            self._script("stop", 300)


def ray_running() -> bool:
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if cmdline and Path(cmdline[0]).name == "raylet":
            return True
    return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
    except OSError:
        return ""
