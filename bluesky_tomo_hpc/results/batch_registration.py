"""Register a finished batch job's volume in Tiled, linked to its raw run.

The job monitor decides *when* (a job COMPLETED); this module decides *how*: in place (Tiled reads
the job's OME-Zarr where it lies, when the server can read that folder) or uploaded, and with
which metadata. A failure raises, so the monitor keeps the job COMPLETED and tries again later:
results are registered when Tiled comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .tiled_results import write_reconstruction

log = logging.getLogger(__name__)


class BatchRegistrar:
    """Writes batch results under ``tiled`` (a container, or a callable returning one lazily).

    ``register_in_place`` None: in place when Tiled can read the Zarr, else upload. Where the
    server's ``readable_storage`` is known, pass it as ``readable_roots``: otherwise readability
    is probed by reading one slice, and a refusal costs the Tiled client's retries (~25 s).
    """

    def __init__(self, tiled: Any | Callable[[], Any], *, register_in_place: bool | None = None,
                 readable_roots: list[str | Path] | None = None):
        self._tiled = tiled
        self.register_in_place = register_in_place
        self.readable_roots = (
            [Path(r).resolve() for r in readable_roots] if readable_roots is not None else None
        )

    def container(self) -> Any:
        return self._tiled() if callable(self._tiled) else self._tiled

    def register(self, job: Any, result: dict[str, Any], executor: str) -> str:
        """Register ``job``'s volume (a :class:`~bluesky_tomo_hpc.batch.job.ReconJob`); returns
        the Tiled node path. Raises when Tiled refuses or cannot be reached."""
        metadata = {
            "job_id": job.job_id,
            "executor": executor,
            "center": result.get("center"),
            "timings": result.get("timings", {}),
            "ranks": result.get("ranks"),
            "ome_zarr": result.get("ome_zarr"),
            "tiff_dir": result.get("tiff_dir"),
            "provenance": str(job.outputs.provenance_path),
            "warnings": result.get("warnings", []),
            "sample": job.metadata.get("sample"),
            "series": job.metadata.get("series"),
        }

        def write(in_place: bool) -> Any:
            return write_reconstruction(
                self.container(), raw_uid=job.run_uid, params=job.params,
                volume_zarr=result["volume_zarr"], metadata=metadata, kind="batch",
                register_in_place=in_place)

        in_place = self.register_in_place
        if in_place is None and self.readable_roots is not None:
            zpath = Path(result.get("volume_zarr", "")).resolve()
            in_place = any(zpath.is_relative_to(r) for r in self.readable_roots)
        node = None
        if in_place is not False:
            try:
                node = write(True)
                node["volume"][:1]  # Tiled checks readability only on read: read one slice now
            except Exception as exc:
                if in_place:
                    raise
                log.info("job %s: Tiled cannot read %s in place (%s); uploading",
                         job.job_id, result["volume_zarr"], exc)
                node = None
        if node is None:
            node = write(False)
        return "/".join(getattr(node, "path_parts", []) or [getattr(node, "item", {}).get("id", "")])


def tiled_container(uri: str, api_key: str | None = None, name: str = "processed") -> Callable[[], Any]:
    """A lazy factory for the processed container (the client is built on the monitor's thread)."""
    cache: dict[str, Any] = {}

    def get() -> Any:
        if "c" not in cache:
            from tiled.client import from_uri

            from .tiled_results import processed_container

            cache["c"] = processed_container(from_uri(uri, api_key=api_key), name)
        return cache["c"]

    return get
