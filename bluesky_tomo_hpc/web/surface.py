"""An isosurface of a volume region as a triangle mesh, in the MZ3 format niivue reads, so the
3D view draws a real surface at the threshold (not only a shaded volume rendering).

Why on the server: niivue 0.69 has no marching cubes of its own, and scikit-image's
:func:`skimage.measure.marching_cubes` (installed with the core: ome-zarr needs it) runs on the same
bounded region the 3D view already loads (at most :data:`MAX_MESH_SIDE` voxels a side), so the
mesh sits exactly on the rendered volume. MZ3 is niivue's own binary mesh: a 16-byte header
(magic ``MZ``, attribute bits faces|vertices, face and vertex counts) then uint32 faces and
float32 vertices, little-endian.
"""

from __future__ import annotations

import struct

import numpy as np

from .catalog import CatalogError

#: the largest region side a mesh is made from (128**3 float32: 8 MiB; marching cubes < 1 s)
MAX_MESH_SIDE = 128
#: the most triangles a mesh may have (about 36 MiB of MZ3): a noisy threshold is refused, not sent
MAX_FACES = 3_000_000
MZ3_MAGIC = 23117  # b"MZ" little-endian
MZ3_FACES, MZ3_VERTICES = 1, 2


def isosurface(vol: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(faces (n, 3) uint32, vertices (m, 3) float32 as x, y, z voxel indices of ``vol``) of the surface
    of ``vol`` (z, y, x) at ``level``; a :class:`CatalogError` (400) names a level outside the
    values or a surface too large."""
    from skimage.measure import marching_cubes

    vol = np.nan_to_num(np.asarray(vol, dtype=np.float32), nan=float(np.nanmin(vol)) if vol.size else 0.0)
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise CatalogError(f"an isosurface needs a 3-D region at least 2 voxels a side, not {vol.shape}", 400)
    lo, hi = float(vol.min()), float(vol.max())
    if not lo < level < hi:
        raise CatalogError(f"no surface at {level:.6g}: the region's values run from {lo:.6g} to {hi:.6g}",
                           400)
    verts, faces, _normals, _values = marching_cubes(vol, level=level, allow_degenerate=False)
    if len(faces) > MAX_FACES:
        raise CatalogError(f"the surface at {level:.6g} has {len(faces)} triangles (at most {MAX_FACES}): "
                           "raise the threshold or choose a smaller region", 400)
    # (z, y, x) -> (x, y, z), the NIfTI's axes; mirroring the axes flips the winding back outwards
    return (np.ascontiguousarray(faces[:, ::-1], dtype="<u4"),
            np.ascontiguousarray(verts[:, ::-1], dtype="<f4"))


def mz3_bytes(faces: np.ndarray, vertices: np.ndarray) -> bytes:
    """``faces`` and ``vertices`` as an MZ3 file (uncompressed: it travels on loopback)."""
    header = struct.pack("<HHIII", MZ3_MAGIC, MZ3_FACES | MZ3_VERTICES, len(faces), len(vertices), 0)
    return (header + np.ascontiguousarray(faces, "<u4").tobytes()
            + np.ascontiguousarray(vertices, "<f4").tobytes())
