"""API keys with policies: the keys file (YAML, from a Kubernetes Secret), its validation, and its
reload on change.

A file that does not validate is refused with a clear log message and the policy already loaded
stays in force. The legacy `INFERENCE_API_KEY` / `INFERENCE_ADMIN_KEY` keys keep working as
unlimited keys of the tenants "default" and "admin".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

logger = logging.getLogger("ray.serve")

KEYS_FILE_ENV = "INFERENCE_KEYS_FILE"
API_KEY_ENV = "INFERENCE_API_KEY"
ADMIN_KEY_ENV = "INFERENCE_ADMIN_KEY"
# Set to 1 by every rendered RayService: the ingress refuses to start without any key (neither
# INFERENCE_API_KEY nor a keys file) unless INFERENCE_ALLOW_ANONYMOUS is "true", so serving an
# open API is an explicit choice, never the result of an empty or forgotten Secret.
REQUIRE_API_KEY_ENV = "INFERENCE_REQUIRE_API_KEY"
ALLOW_ANONYMOUS_ENV = "INFERENCE_ALLOW_ANONYMOUS"


class MissingApiKey(RuntimeError):
    """The deployment requires an API key and none is configured."""


class Role(StrEnum):
    user = "user"
    admin = "admin"


class Tier(StrEnum):
    high = "high"
    normal = "normal"
    low = "low"


# vLLM's priority scheduling serves lower values first.
TIER_PRIORITY = {Tier.high: 0, Tier.normal: 1, Tier.low: 2}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Per-key limits; a missing limit is no limit."""

    requests_per_minute: int | None = Field(
        None, ge=1, description="Requests admitted per minute (token bucket refilled continuously)."
    )
    tokens_per_minute: int | None = Field(
        None,
        ge=1,
        description="Prompt plus completion tokens per minute, summed over every step of a pipeline.",
    )
    max_concurrent_requests: int | None = Field(
        None, ge=1, description="Requests of this key open at once, across every ingress replica."
    )

    def unlimited(self) -> bool:
        return (
            self.requests_per_minute is None
            and self.tokens_per_minute is None
            and (self.max_concurrent_requests is None)
        )


class KeyEntry(Limits):
    """One API key and its policy."""

    key: str = Field(min_length=8, max_length=256, pattern=r"^[\x21-\x7e]+$", description="The secret.")
    tenant: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Tenant the key belongs to; metrics are labelled by tenant, never by key.",
    )
    role: Role = Field(Role.user, description="admin keys may also load and unload models.")
    models: tuple[str, ...] | None = Field(
        None, description="Model ids or preset names this key may address; missing means all."
    )
    tier: Tier = Field(Tier.normal, description="Priority tier: who the engines serve first.")

    def limits(self) -> Limits:
        return Limits(
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_concurrent_requests=self.max_concurrent_requests,
        )


class KeysFile(_Strict):
    """The keys file: `keys:` followed by one entry per key."""

    keys: tuple[KeyEntry, ...] = Field(description="Every key of the file; keys must be distinct.")

    @model_validator(mode="after")
    def _distinct(self) -> KeysFile:
        seen: set[str] = set()
        for entry in self.keys:
            if entry.key in seen:
                raise ValueError(f"a key is listed twice (tenant {entry.tenant})")
            seen.add(entry.key)
        return self


class KeysFileError(ValueError):
    """A keys file that cannot be used; the message names the problem, never a key."""


def parse_keys_file(text: str) -> KeysFile:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KeysFileError(f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise KeysFileError("expected a mapping with a 'keys' list")
    try:
        return KeysFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise KeysFileError(f"{exc.error_count()} problem(s): {problems}") from None


@dataclass(frozen=True)
class Principal:
    """Who a request is from, once its key is known."""

    tenant: str
    role: Role
    limits: Limits
    tier: Tier
    models: tuple[str, ...] | None
    key_id: str  # a digest of the key: quota counters are per key, logs and metrics never see it
    legacy: bool = False  # INFERENCE_API_KEY / INFERENCE_ADMIN_KEY: unlimited, and not tier-gated

    @property
    def priority(self) -> int:
        return TIER_PRIORITY[self.tier]

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(k.strip() for k in (value or "").split(",") if k.strip())


@dataclass(frozen=True)
class KeyTable:
    """Every key the ingress accepts. An empty table means authentication is off (dev only)."""

    entries: tuple[tuple[str, Principal], ...] = ()
    has_admin_keys: bool = False
    guards_inference: bool = False  # False with admin keys alone: only load/unload need a key

    @staticmethod
    def build(api: str | None, admin: str | None, file: KeysFile | None = None) -> KeyTable:
        entries: list[tuple[str, Principal]] = []
        unlimited = Limits()
        for key in _split(api):
            principal = Principal("default", Role.user, unlimited, Tier.normal, None, key_id(key), True)
            entries.append((key, principal))
        for key in _split(admin):
            principal = Principal("admin", Role.admin, unlimited, Tier.normal, None, key_id(key), True)
            entries.append((key, principal))
        for entry in file.keys if file else ():
            entries.append(
                (
                    entry.key,
                    Principal(
                        entry.tenant, entry.role, entry.limits(), entry.tier, entry.models, key_id(entry.key)
                    ),
                )
            )
        admins = any(p.role == Role.admin for _, p in entries)
        return KeyTable(tuple(entries), admins, bool(_split(api)) or bool(file and file.keys))

    def lookup(self, presented: str) -> Principal | None:
        # Compare against every key so timing reveals neither which key nor how much matched.
        found: Principal | None = None
        for key, principal in self.entries:
            if hmac.compare_digest(presented.encode(), key.encode()):
                found = principal
        return found


class KeyRing:
    """The current `KeyTable`, rebuilt when the keys file changes (checked at most every
    `check_every_s`, by modification time, size and inode, on the request path: no thread, no
    restart).

    A Kubernetes Secret volume swaps files through a symlink, which changes the resolved stat."""

    def __init__(
        self,
        api: str | None,
        admin: str | None,
        path: str | None,
        clock: Callable[[], float],
        check_every_s: float = 2.0,
    ):
        self.api, self.admin, self.path = api, admin, path
        self.clock, self.check_every_s = clock, check_every_s
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self.table = KeyTable.build(api, admin)
        self.last_error: str | None = None
        if path:
            self.refresh(force=True)

    @staticmethod
    def from_env(clock: Callable[[], float], env: Mapping[str, str] | None = None) -> KeyRing:
        """The keys of INFERENCE_API_KEY / INFERENCE_ADMIN_KEY and INFERENCE_KEYS_FILE, enforcing
        INFERENCE_REQUIRE_API_KEY (see MissingApiKey)."""
        env = os.environ if env is None else env
        ring = KeyRing(env.get(API_KEY_ENV), env.get(ADMIN_KEY_ENV), env.get(KEYS_FILE_ENV), clock)
        required = env.get(REQUIRE_API_KEY_ENV, "").strip() == "1"
        anonymous_ok = env.get(ALLOW_ANONYMOUS_ENV, "").strip().lower() == "true"
        if required and not ring.table.guards_inference and not anonymous_ok:
            raise MissingApiKey(
                f"{REQUIRE_API_KEY_ENV}=1 but neither {API_KEY_ENV} nor {KEYS_FILE_ENV} gives a key: "
                "put an api-key in the inference-api-keys Secret, or opt out explicitly with "
                'allow-anonymous: "true" in it (docs/deploy-eks.md, step 9)'
            )
        return ring

    def current(self) -> KeyTable:
        if self.path and self.clock() - self._checked_at >= self.check_every_s:
            self.refresh()
        return self.table

    def refresh(self, force: bool = False) -> bool:
        """Reload the file if it changed; True if a new policy is now in force."""
        assert self.path is not None
        self._checked_at = self.clock()
        try:
            stat = Path(self.path).stat()
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if stamp == self._stamp and not force:
                return False
            text = Path(self.path).read_text()
        except OSError as exc:
            return self._refuse(f"cannot be read: {exc.strerror or exc}", None)
        try:
            parsed = parse_keys_file(text)
        except KeysFileError as exc:
            return self._refuse(str(exc), stamp)
        self._stamp, self.last_error = stamp, None
        self.table = KeyTable.build(self.api, self.admin, parsed)
        logger.info("keys file %s loaded: %d key(s)", self.path, len(parsed.keys))
        return True

    def _refuse(self, why: str, stamp: tuple[int, int, int] | None) -> bool:
        if stamp is not None:
            self._stamp = stamp  # do not log the same bad file again on every check
        message = f"keys file {self.path} refused, the previous policy stays in force: {why}"
        if message != self.last_error:
            logger.error(message)
        self.last_error = message
        return False
