"""The page's API for reconstructions: list, describe, slices (PNG, float32 for the viewer, TIFF
to download), the histogram of a volume, and a volume or region as NIfTI for the 3D view, with
its isosurface at a threshold as an MZ3 mesh (:mod:`.surface`).

Float32 slices go to the browser as raw little-endian bytes with their shape in ``X-Slice``: the
page colours them itself, so the value under the cursor, the shared window and the colour maps
are exact and a window change costs no request.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .catalog import Catalog, CatalogError
from .images import to_png
from .query import Query
from .volume_reader import VolumeReader

NO_STORE = {"Cache-Control": "no-store"}
#: the query parameters of the slice and preview pictures (contrast percentiles)
CONTRAST = ("lo", "hi")
#: the largest side of the 3D view's volume or region (256**3 float32: 64 MiB), and the smallest
MAX_VOLUME_SIDE, MIN_VOLUME_SIDE = 256, 16
#: the most rows a list answers
MAX_ROWS = 500
#: a volume's largest side, and the most multiscale levels
MAX_SIDE, MAX_LEVEL = 2**31, 16


def _png(data: Any, q: Query) -> Response:
    lo, hi = q.number("lo", 0, 100), q.number("hi", 0, 100)
    if lo is not None and hi is not None:
        if not lo < hi:
            raise CatalogError("contrast percentiles must satisfy 0 <= lo < hi <= 100", 400)
        png = to_png(data, percentiles=(lo, hi))
    else:
        png = to_png(data)
    return Response(png, media_type="image/png", headers=NO_STORE)


def _box(q: Query) -> tuple[int, int, int, int, int, int] | None:
    raw = q.text("roi", 80)
    if not raw:
        return None
    try:
        box = tuple(int(v) for v in raw.split(","))
    except ValueError:
        box = ()
    if len(box) != 6:
        raise CatalogError(f"roi must be six whole numbers z0,z1,y0,y1,x0,x1, got {raw!r}", 400)
    return box  # type: ignore[return-value]


def nifti_bytes(vol: np.ndarray, window: tuple[float, float], step: int = 1) -> bytes:
    """``vol`` (z, y, x) as 8-bit NIfTI whose scale factors give back the values in ``window``:
    a quarter of float32's size, and the 3D view's threshold is in the volume's own units. Its
    voxels are ``step`` full-resolution voxels wide (world units: full-resolution voxels from the
    region's corner), as the isosurface mesh's vertices are, whatever either's sampling."""
    import nibabel as nib

    lo, hi = window
    if not hi > lo:
        hi = lo + 1.0
    grey = np.clip((np.nan_to_num(vol, nan=lo) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    img = nib.Nifti1Image(np.ascontiguousarray(grey.transpose(2, 1, 0)), np.diag([step, step, step, 1.0]))
    img.header.set_slope_inter((hi - lo) / 255.0, lo)
    return img.to_bytes()


def recon_routes(catalog: Catalog, reader: VolumeReader) -> list[Route]:
    def recons(request: Request) -> Response:
        q = Query(request, ("kind", "raw_uid", "limit"))
        return JSONResponse({"reconstructions": catalog.reconstructions(
            kind=q.text("kind", 64), raw_uid=q.text("raw_uid", 200),
            limit=q.integer("limit", 1, MAX_ROWS, 50))})

    def recon(request: Request) -> Response:
        Query(request)
        return JSONResponse(reader.info(request.path_params["key"]))

    def _slice(request: Request, q: Query) -> tuple[np.ndarray, dict[str, Any]]:
        return reader.slice(request.path_params["key"], request.path_params["plane"],
                            q.integer("index", 0, MAX_SIDE), q.integer("level", 0, MAX_LEVEL, 0))

    def slice_png(request: Request) -> Response:
        q = Query(request, ("index", "level", *CONTRAST))
        data, where = _slice(request, q)
        response = _png(data, q)
        response.headers["X-Slice"] = json.dumps(where)
        return response

    def slice_f32(request: Request) -> Response:
        data, where = _slice(request, Query(request, ("index", "level")))
        return Response(np.ascontiguousarray(data, dtype="<f4").tobytes(),
                        media_type="application/octet-stream",
                        headers={**NO_STORE, "X-Slice": json.dumps(where)})

    def slice_tiff(request: Request) -> Response:
        import tifffile

        data, where = _slice(request, Query(request, ("index", "level")))
        buf = io.BytesIO()
        key, plane = request.path_params["key"], request.path_params["plane"]
        tifffile.imwrite(buf, data.astype(np.float32),
                         metadata={"reconstruction": key, "plane": plane, "index": where["index"],
                                   "level": where["level"], "volume_shape": where["shape"]})
        name = f"{key}_{plane}_{where['index']}.tiff"
        return Response(buf.getvalue(), media_type="image/tiff",
                        headers={**NO_STORE, "Content-Disposition": f'attachment; filename="{name}"'})

    def preview(request: Request) -> Response:
        q = Query(request, CONTRAST)
        return _png(catalog.preview(request.path_params["key"], request.path_params["plane"]), q)

    def stats(request: Request) -> Response:
        Query(request)
        return JSONResponse(reader.stats(request.path_params["key"]))

    def volume(request: Request) -> Response:
        q = Query(request, ("max_side", "lo", "hi", "roi"))
        max_side = q.integer("max_side", MIN_VOLUME_SIDE, MAX_VOLUME_SIDE, 128)
        lo, hi = q.number("lo", -1e30, 1e30), q.number("hi", -1e30, 1e30)
        vol, where = reader.region(request.path_params["key"], _box(q), max_side=max_side)
        if lo is None or hi is None:
            lo, hi = reader.stats(request.path_params["key"])["window"]
        return Response(nifti_bytes(vol, (lo, hi), int(where["step"])), media_type="application/octet-stream",
                        headers={**NO_STORE, "X-Region": json.dumps(where)})

    def surface(request: Request) -> Response:
        from .surface import MAX_MESH_SIDE, isosurface, mz3_bytes

        q = Query(request, ("level", "max_side", "roi"))
        level = q.number("level", -1e30, 1e30)
        if level is None:
            raise CatalogError("give level=VALUE: the threshold the surface is drawn at", 400)
        max_side = q.integer("max_side", MIN_VOLUME_SIDE, MAX_MESH_SIDE, MAX_MESH_SIDE)
        vol, where = reader.region(request.path_params["key"], _box(q), max_side=max_side)
        faces, vertices = isosurface(vol, level)
        vertices *= np.float32(where["step"])  # full-resolution voxels from the region's corner
        mesh = {"faces": len(faces), "vertices": len(vertices), "level": level}
        return Response(mz3_bytes(faces, vertices), media_type="application/octet-stream",
                        headers={**NO_STORE, "X-Region": json.dumps(where), "X-Mesh": json.dumps(mesh)})

    return [
        Route("/api/recon", recons), Route("/api/recon/{key}", recon),
        Route("/api/recon/{key}/slice/{plane}.png", slice_png),
        Route("/api/recon/{key}/slice/{plane}.f32", slice_f32),
        Route("/api/recon/{key}/slice/{plane}.tiff", slice_tiff),
        Route("/api/recon/{key}/preview/{plane}.png", preview),
        Route("/api/recon/{key}/stats", stats),
        Route("/api/recon/{key}/volume.nii", volume),
        Route("/api/recon/{key}/surface.mz3", surface),
    ]
