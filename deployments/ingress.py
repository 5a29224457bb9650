"""The ingress deployment: the OpenAI HTTP API, composing model deployments through handles."""

from __future__ import annotations

import os
from typing import Any

from ray import serve

from serve_app.config import AppArgs, Catalog, Preset
from serve_app.config.fit import ModelFit
from serve_app.http_guard import KeyPolicy
from serve_app.metrics import RayRequestMetrics
from serve_app.model_client import HandleModelClient
from serve_app.routes import build_api
from serve_app.service import InferenceService


@serve.ingress()
class Ingress:
    def __init__(
        self,
        args: AppArgs,
        catalog: Catalog,
        preset: Preset,
        fits: list[ModelFit],
        model_handles: dict[str, Any],
        directory: Any,
    ):
        clients = {model_id: HandleModelClient(model_id, h) for model_id, h in model_handles.items()}
        self.metrics = RayRequestMetrics()
        self.service = InferenceService(args, catalog, preset, fits, clients, directory, self.metrics)
        self.policy = KeyPolicy.from_env(os.environ)

    def __serve_build_asgi_app__(self) -> Any:
        return build_api(self.service, self.policy, self.metrics)
