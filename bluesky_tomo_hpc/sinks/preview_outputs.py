"""Where live-preview updates go besides a viewer: TIFF and PNG files, and Tiled next to the raw run."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.params import ReconParams
from ..model import safe_component
from .preview_stream import PreviewUpdate

__all__ = ["PreviewFileWriter", "PreviewTiledWriter"]


class PreviewFileWriter:
    """Preview output for people with ImageJ: ``<uid8>_<plane>.tif`` (float32) rewritten on each
    update (written aside, then renamed, so a reader never sees half a file), and at the final
    ``<uid8>_preview.png`` with the three slices side by side."""

    def __init__(self, directory: str | Path, *, live: bool = True, png: bool = True):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.live = live
        self.png = png
        self.written: list[Path] = []

    def __call__(self, update: PreviewUpdate) -> None:
        import tifffile

        if not (self.live or update.final):
            return
        stem = safe_component(update.run_uid[:8], "run uid")  # a uid may be '../../x'
        for plane, image in update.slices.items():
            path = self.directory / f"{stem}_{plane}.tif"
            tmp = path.with_suffix(".tif.part")
            tifffile.imwrite(tmp, np.asarray(image, np.float32),
                             description=json.dumps({"seq": update.seq, "final": update.final,
                                                     "index": update.indices.get(plane)}))
            os.replace(tmp, path)
            if update.final:
                self.written.append(path)
        if update.final and self.png and not update.metadata.get("refinement_pending"):
            from ..results.pictures import save_orthoslices_png

            md = update.metadata
            check = md.get("center_check") or {}
            centre = f"centre {md.get('center', float('nan')):.2f} px"
            if check.get("done"):  # the slices are at the centre the 0/180 pair gave (moved or confirmed)
                centre += " (checked on the 0/180 pair)"
            title = (f"run {stem}  {md.get('n_projections_used')} projections  {centre}"
                     + ("  CENTRE UNCERTAIN" if md.get("center_uncertain") else "")
                     + ("  (degraded)" if md.get("degraded") else ""))
            self.written.append(save_orthoslices_png(update.slices, self.directory / f"{stem}_preview.png",
                                                     title))


class PreviewTiledWriter:
    """Writes the final preview next to the raw run in Tiled (kind ``preview``), through the
    results module, so it is found like any reconstruction of that run.

    With a ``spool`` (:class:`~..results.spool.ResultSpool`), a final preview Tiled does not take
    (server killed or restarting) is kept there and registered when Tiled is back (the recovery
    thread or ``bluesky-tomo-hpc recover``), and ``report(run_uid, message)`` puts the failure in
    the run's error list; without one the failure is raised (and logged by the preview)."""

    def __init__(self, container: Callable[[], Any] | Any, params: ReconParams | None = None, *,
                 spool: Any = None, report: Callable[[str, str], None] | None = None):
        self._container = container
        self.params = params or ReconParams()
        self.spool = spool
        self.report = report
        self.nodes: list[Any] = []
        self.spooled: list[Path] = []

    def __call__(self, update: PreviewUpdate) -> None:
        if not update.final or update.metadata.get("refinement_pending"):
            return
        from ..results.tiled_results import write_reconstruction

        # the recon params of the worker (their hash keys the node); preview binning and centre
        # are in the metadata
        params = self.params
        md = {**update.metadata, "slice_indices": dict(update.indices), "preview_seq": update.seq}
        try:
            container = self._container() if callable(self._container) else self._container
            self.nodes.append(write_reconstruction(container, raw_uid=update.run_uid, params=params,
                                                   previews=update.slices, metadata=md, kind="preview"))
        except Exception as exc:
            if self.spool is None:
                raise
            error = f"{type(exc).__name__}: {exc}"
            path = self.spool.put_preview(raw_uid=update.run_uid, params=params, slices=update.slices,
                                          metadata=md, error=error)
            self.spooled.append(path)
            message = (f"writing the final preview to Tiled failed ({error}); it is kept in {path} "
                       "and registered when Tiled is back (or run: bluesky-tomo-hpc recover)")
            if self.report is not None:
                self.report(update.run_uid, message)
