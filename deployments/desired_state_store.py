"""Where the ModelDirectory keeps each model's desired state ("loaded"/"unloaded") so that it
outlives the directory's replica: Serve gives every deployment of an application whose args changed
a new version, so a redeploy restarts the directory, and an unloaded model would come back loaded.

The store belongs to the Ray cluster: Ray's GCS key-value store, where Ray Serve keeps its own
checkpoints (ray/serve/_private/storage/kv_store.py). It lives as long as the cluster's GCS: across
redeploys and directory restarts; with GCS fault tolerance (external Redis) across a head restart
too; not across a new Ray cluster (`ray stop`, a KubeRay upgrade that creates a new RayCluster).
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

from serve_app.contracts import DesiredState

# Our own namespace of the GCS key-value store, apart from Serve's ("serve").
KV_NAMESPACE = b"inference"
KV_TIMEOUT_S = 5.0


class DesiredStateStore(Protocol):
    """The desired states of one application's models."""

    async def read_all(self) -> dict[str, str]:
        """Every stored model id of the application and its stored value (not validated)."""

    async def write(self, model_id: str, desired: DesiredState) -> None: ...

    async def delete(self, model_id: str) -> None: ...


class GcsDesiredStateStore:
    """`DesiredStateStore` in the GCS key-value store, keyed by application name and model id."""

    def __init__(self, app_name: str, gcs_client: Any = None, timeout_s: float = KV_TIMEOUT_S):
        if gcs_client is None:
            # The worker's own client, connected and authenticated (Ray token auth) at startup.
            from ray.experimental.internal_kv import internal_kv_get_gcs_client

            gcs_client = internal_kv_get_gcs_client()
            assert gcs_client is not None, "not in a Ray worker"
        self._gcs = gcs_client
        self._timeout_s = timeout_s
        # Quoted: an application name may hold "/" (Serve does not forbid it); model ids are the
        # catalog's, which never do.
        self._prefix = f"model-directory/{quote(app_name, safe='')}/desired/".encode()

    def _key(self, model_id: str) -> bytes:
        return self._prefix + model_id.encode()

    async def read_all(self) -> dict[str, str]:
        keys = await self._gcs.async_internal_kv_keys(
            self._prefix, namespace=KV_NAMESPACE, timeout=self._timeout_s
        )
        if not keys:
            return {}
        values = await self._gcs.async_internal_kv_multi_get(
            list(keys), namespace=KV_NAMESPACE, timeout=self._timeout_s
        )
        return {
            key[len(self._prefix) :].decode(): value.decode(errors="replace")
            for key, value in values.items()
            if key.startswith(self._prefix) and value is not None
        }

    async def write(self, model_id: str, desired: DesiredState) -> None:
        await self._gcs.async_internal_kv_put(
            self._key(model_id),
            desired.encode(),
            overwrite=True,
            namespace=KV_NAMESPACE,
            timeout=self._timeout_s,
        )

    async def delete(self, model_id: str) -> None:
        await self._gcs.async_internal_kv_del(
            self._key(model_id), False, namespace=KV_NAMESPACE, timeout=self._timeout_s
        )
