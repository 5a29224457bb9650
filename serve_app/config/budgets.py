"""Drain budgets checked against one another and against Serve's deregistration window.

Behind HAProxy (Serve's high-throughput mode), a stopping ingress replica stays reachable for
`RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S` (30 s by default) so HAProxy can deregister it, and
keeps admitting requests meanwhile; its budget must leave those requests time to run after that.
"""

from __future__ import annotations

from collections.abc import Mapping

from serve_app.config.app_args import AppArgs
from serve_app.config.loading import ConfigError
from serve_app.config.schema import ServingOptions

HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
DEREGISTRATION_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
DEFAULT_DEREGISTRATION_S = 30.0
# What a request admitted at the end of the deregistration window gets, at least, before its cut.
MIN_INGRESS_SERVICE_S = 10.0
# What a model replica's requests get, at least, before the cut.
MIN_MODEL_SERVICE_S = 1.0


def deregistration_window_s(env: Mapping[str, str]) -> float:
    """How long Serve keeps a stopping ingress reachable: 0 with the classic proxy."""
    if env.get(HAPROXY_ENV, "0") != "1":  # exactly as Ray reads it
        return 0.0
    return float(env.get(DEREGISTRATION_ENV, DEFAULT_DEREGISTRATION_S))


def check_drain_budgets(args: AppArgs, models: Mapping[str, ServingOptions], window_s: float) -> None:
    margin = args.shutdown_cut_margin_s
    for model_id, serving in models.items():
        if serving.graceful_shutdown_timeout_s < margin + MIN_MODEL_SERVICE_S:
            raise ConfigError(
                f"{model_id}: graceful_shutdown_timeout_s {serving.graceful_shutdown_timeout_s:g} s "
                f"must exceed shutdown_cut_margin_s ({margin:g} s) by at least {MIN_MODEL_SERVICE_S:g} s"
            )
    need = window_s + margin + MIN_INGRESS_SERVICE_S
    if args.ingress.graceful_shutdown_timeout_s < need:
        raise ConfigError(
            f"ingress.graceful_shutdown_timeout_s {args.ingress.graceful_shutdown_timeout_s:g} s is too "
            f"short: behind HAProxy a stopping ingress admits requests for {window_s:g} s "
            f"({DEREGISTRATION_ENV}), and they need {MIN_INGRESS_SERVICE_S:g} s to run plus the "
            f"{margin:g} s cut margin: at least {need:g} s"
        )
