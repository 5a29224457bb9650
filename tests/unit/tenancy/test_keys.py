"""deployments/ingress/tenancy/keys.py: the keys file, its validation, and its reload; fuzzed files are
refused with a clear message while the policy in force stays."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployments.ingress.tenancy.keys import (
    KeyEntry,
    KeyRing,
    KeysFile,
    KeysFileError,
    Limits,
    Role,
    Tier,
    parse_keys_file,
)

from .fakes import FakeClock

GOOD = """
keys:
  - key: sk-team-a-000001
    tenant: team-a
    requests_per_minute: 60
    tokens_per_minute: 10000
    max_concurrent_requests: 4
    models: [qwen2.5-7b, D4]
    tier: high
  - {key: sk-ops-00000001, tenant: ops, role: admin}
"""


def test_a_good_file_parses_with_defaults() -> None:
    parsed = parse_keys_file(GOOD)
    team, ops = parsed.keys
    assert team.limits() == Limits(requests_per_minute=60, tokens_per_minute=10000, max_concurrent_requests=4)
    assert (team.tier, team.role, team.models) == (Tier.high, Role.user, ("qwen2.5-7b", "D4"))
    assert (ops.role, ops.tier, ops.models, ops.limits().unlimited()) == (Role.admin, Tier.normal, None, True)


def test_every_field_is_described() -> None:
    for model in (KeyEntry, KeysFile, Limits):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keys: [\n", "not valid YAML"),
        ("- a list\n", "expected a mapping"),
        ("keys:\n  - {key: sk-00000000001, tenant: t, requests_per_mnute: 1}\n", "requests_per_mnute"),
        ("keys:\n  - {key: sk-00000000001, tenant: t, tier: urgent}\n", "keys.0.tier"),
        ("keys:\n  - {key: sk-00000000001, tenant: t, tokens_per_minute: 0}\n", "tokens_per_minute"),
        ("keys:\n  - {key: short, tenant: t}\n", "keys.0.key"),
        ("keys:\n  - {key: sk-00000000001, tenant: 'a b'}\n", "keys.0.tenant"),
        (
            "keys:\n  - {key: sk-00000000001, tenant: a}\n  - {key: sk-00000000001, tenant: b}\n",
            "listed twice",
        ),
        ("keys: []\nextra: 1\n", "extra"),
    ],
)
def test_bad_files_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(KeysFileError, match=message) as refused:
        parse_keys_file(text)
    assert "sk-00000000001" not in str(refused.value)  # the message never shows a key


def write(path: Path, text: str, clock: FakeClock) -> None:
    path.write_text(text)
    clock.advance(1)
    os.utime(path, (clock.now, clock.now))  # a distinct mtime, whatever the file system's resolution


def test_a_changed_file_is_reloaded_and_a_bad_one_keeps_the_old_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    path = tmp_path / "keys.yaml"
    write(path, GOOD, clock)
    ring = KeyRing("sk-legacy-01", "sk-legacy-admin", str(path), clock, check_every_s=2)
    table = ring.current()
    assert table.guards_inference and table.has_admin_keys
    assert table.lookup("sk-team-a-000001").tenant == "team-a"  # type: ignore[union-attr]
    legacy = table.lookup("sk-legacy-01")
    assert legacy is not None and legacy.limits.unlimited() and legacy.tenant == "default"
    assert table.lookup("sk-legacy-admin").role == Role.admin  # type: ignore[union-attr]
    assert table.lookup("sk-nobody") is None

    added = GOOD + "  - {key: sk-new-000000001, tenant: new}\n"
    write(path, added, clock)
    assert ring.current() is table  # not checked again within check_every_s
    clock.advance(2)
    assert ring.current().lookup("sk-new-000000001") is not None

    in_force = ring.current()
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        write(path, added + "  - {key: sk-bad-000000001, tenant: bad, tier: urgent}\n", clock)
        clock.advance(2)
        assert ring.current() is in_force
        clock.advance(2)
        ring.current()  # the same bad file is not logged twice
    [record] = [r for r in caplog.records if "refused" in r.message]
    assert "previous policy stays in force" in record.message and "keys.3.tier" in record.message
    assert "sk-bad" not in record.message

    path.unlink()
    clock.advance(2)
    assert ring.current() is in_force  # a missing file does not drop the keys either


def test_a_bad_first_file_leaves_only_the_legacy_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys: nope")
    ring = KeyRing("sk-legacy-01", None, str(path), FakeClock())
    assert ring.last_error and "refused" in ring.last_error
    assert [p.tenant for _, p in ring.table.entries] == ["default"]


def test_admin_keys_alone_guard_only_load_and_unload() -> None:
    ring = KeyRing(None, "sk-admin-0001", None, FakeClock())
    assert ring.current().has_admin_keys and not ring.current().guards_inference


# ---------------------------------------------------------------- fuzzing

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
field_names = st.sampled_from(
    [
        "key",
        "tenant",
        "role",
        "tier",
        "models",
        "requests_per_minute",
        "tokens_per_minute",
        "max_concurrent_requests",
        "rpm",
        "",
    ]
)
entries = st.dictionaries(field_names, st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=8)
documents = st.one_of(
    st.fixed_dictionaries({"keys": st.lists(entries, max_size=4)}),
    st.dictionaries(st.text(max_size=8), scalars, max_size=3),
    st.lists(scalars, max_size=3),
    scalars,
)


def _check_refused_or_valid(tmp_path: Path, text: str) -> None:
    clock = FakeClock()
    path = tmp_path / "keys.yaml"
    write(path, GOOD, clock)
    ring = KeyRing(None, None, str(path), clock, check_every_s=0)
    in_force = ring.current()
    write(path, text, clock)
    clock.advance(5)
    try:
        parsed = parse_keys_file(text)
    except KeysFileError as error:
        assert str(error), "a refusal must say why"
        assert ring.current() is in_force
        assert ring.last_error is not None and "previous policy stays in force" in ring.last_error
        return
    assert ring.current().entries == tuple((e.key, ring.current().lookup(e.key)) for e in parsed.keys)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(documents)
def test_fuzzed_documents_are_refused_or_loaded_never_half(tmp_path: Path, document: object) -> None:
    _check_refused_or_valid(tmp_path, yaml.safe_dump(document))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_fuzzed_text_is_refused_or_loaded_never_a_crash(tmp_path: Path, text: str) -> None:
    _check_refused_or_valid(tmp_path, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=0, max_value=len(GOOD) - 1), st.sampled_from(["", ":", "-", "\t", "{", "x"]))
def test_mutated_good_files_are_refused_or_loaded(tmp_path: Path, at: int, insert: str) -> None:
    _check_refused_or_valid(tmp_path, GOOD[:at] + insert + GOOD[at + 1 :])
