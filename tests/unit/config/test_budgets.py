"""serve_app/config/budgets.py: drain budgets against the cut margin and Serve's deregistration
window, and the unload drain's default (serve_app/config/schema.py)."""

from __future__ import annotations

import pytest

from serve_app.config import AppArgs
from serve_app.config.budgets import (
    DEFAULT_DEREGISTRATION_S,
    DEREGISTRATION_ENV,
    HAPROXY_ENV,
    MIN_INGRESS_SERVICE_S,
    MIN_MODEL_SERVICE_S,
    check_drain_budgets,
    deregistration_window_s,
)
from serve_app.config.loading import ConfigError
from serve_app.config.schema import ServingOptions


def args(ingress_s: float = 90.0, margin_s: float = 5.0) -> AppArgs:
    return AppArgs(
        ingress=ServingOptions(graceful_shutdown_timeout_s=ingress_s), shutdown_cut_margin_s=margin_s
    )


def test_the_defaults_pass_behind_haproxy_with_rays_default_window() -> None:
    assert (MIN_MODEL_SERVICE_S, MIN_INGRESS_SERVICE_S) == (1.0, 10.0)
    check_drain_budgets(AppArgs(), {"m": ServingOptions()}, DEFAULT_DEREGISTRATION_S)


def test_a_model_budget_must_exceed_the_margin_by_a_second() -> None:
    check_drain_budgets(args(margin_s=5.0), {"m": ServingOptions(graceful_shutdown_timeout_s=6.0)}, 0.0)
    with pytest.raises(ConfigError, match=r"slow-model: graceful_shutdown_timeout_s 5\.9 s") as caught:
        check_drain_budgets(
            args(margin_s=5.0),
            {"ok": ServingOptions(), "slow-model": ServingOptions(graceful_shutdown_timeout_s=5.9)},
            0.0,
        )
    assert "shutdown_cut_margin_s (5 s)" in str(caught.value)
    with pytest.raises(ConfigError, match="m: graceful_shutdown_timeout_s 10 s"):
        check_drain_budgets(args(margin_s=10.0), {"m": ServingOptions(graceful_shutdown_timeout_s=10.0)}, 0.0)


def test_behind_haproxy_the_ingress_budget_covers_window_margin_and_ten_seconds() -> None:
    window, margin = 30.0, 5.0
    need = window + margin + MIN_INGRESS_SERVICE_S
    check_drain_budgets(args(ingress_s=need, margin_s=margin), {}, window)
    with pytest.raises(
        ConfigError, match=r"ingress.graceful_shutdown_timeout_s 44\.5 s is too short"
    ) as caught:
        check_drain_budgets(args(ingress_s=need - 0.5, margin_s=margin), {}, window)
    assert "at least 45 s" in str(caught.value) and DEREGISTRATION_ENV in str(caught.value)
    with pytest.raises(ConfigError, match="at least 75 s"):  # a longer window needs more
        check_drain_budgets(args(ingress_s=60.0, margin_s=margin), {}, 60.0)


def test_with_the_classic_proxy_the_ingress_needs_only_margin_and_ten_seconds() -> None:
    check_drain_budgets(args(ingress_s=15.0, margin_s=5.0), {}, 0.0)
    with pytest.raises(ConfigError, match="at least 15 s"):
        check_drain_budgets(args(ingress_s=14.0, margin_s=5.0), {}, 0.0)
    with pytest.raises(ConfigError):
        check_drain_budgets(args(ingress_s=15.0, margin_s=5.0), {}, DEFAULT_DEREGISTRATION_S)


@pytest.mark.parametrize(
    ("env", "window"),
    [
        ({}, 0.0),
        ({HAPROXY_ENV: "0"}, 0.0),
        ({HAPROXY_ENV: ""}, 0.0),
        ({HAPROXY_ENV: "0", DEREGISTRATION_ENV: "45"}, 0.0),
        ({HAPROXY_ENV: "1"}, DEFAULT_DEREGISTRATION_S),
        # Ray enables HAProxy for exactly "1" (ray/serve/_private/constants.py).
        ({HAPROXY_ENV: " 1 "}, 0.0),
        ({HAPROXY_ENV: "true"}, 0.0),
        ({HAPROXY_ENV: "1", DEREGISTRATION_ENV: "45"}, 45.0),
        ({HAPROXY_ENV: "1", DEREGISTRATION_ENV: "7.5"}, 7.5),
    ],
)
def test_deregistration_window_from_the_environment(env: dict[str, str], window: float) -> None:
    assert (HAPROXY_ENV, DEREGISTRATION_ENV) == (
        "RAY_SERVE_ENABLE_HA_PROXY",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",
    )
    assert deregistration_window_s(env) == window


def test_a_malformed_window_is_an_error_not_a_silent_default() -> None:
    with pytest.raises(ValueError):
        deregistration_window_s({HAPROXY_ENV: "1", DEREGISTRATION_ENV: "thirty"})


def test_the_unload_drain_defaults_to_the_shutdown_budget_and_can_be_set() -> None:
    assert ServingOptions().unload_drain_s() == 60.0
    assert ServingOptions(graceful_shutdown_timeout_s=120).unload_drain_s() == 120.0
    assert ServingOptions(graceful_shutdown_timeout_s=120, unload_drain_timeout_s=15).unload_drain_s() == 15.0
    with pytest.raises(ValueError):
        ServingOptions(unload_drain_timeout_s=0)
