"""``ReconParams``: every knob of a reconstruction, serialisable and hashable.

The hash identifies a reconstruction: the same raw run with the same parameters hash is the
same result (batch jobs and catalog re-processing reuse it). Unknown keys are refused so that a
typo in a parameters file is an error, not a silent default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

#: the largest parameters file read (a real one is under 2 kB)
MAX_PARAMS_FILE_BYTES = 256 * 1024

FilterName = Literal[
    "none", "ramp", "shepp", "cosine", "hann", "hamming", "parzen", "butterworth"
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RingRemoval(_Frozen):
    """Stripe (ring) removal on sinograms.

    ``fw``: Münch et al. wavelet-Fourier filter (TomoPy ``remove_stripe_fw``).
    ``sort`` (default, chosen by ``benchmarks/bench_rings.py``: least artefact on a simulated
    scan with ring, dead and partial stripes, where ``fw`` spreads arcs into rings and ``all``'s
    dead-stripe step interpolates across sample edges; second on the real neutron scan): Vo et
    al. sorting-based filter (algotom ``remove_stripe_based_sorting``).
    ``all``: Vo et al.'s combined dead + large + sorting removal (algotom ``remove_all_stripe``).
    """

    method: Literal["fw", "sort", "all"] = "sort"
    level: int | None = Field(None, ge=1, le=12, description="fw: wavelet levels (auto if None)")
    wavelet: str = Field("db5", description="fw: PyWavelets wavelet name")
    sigma: float = Field(2.0, gt=0, description="fw: damping width of the Fourier filter")
    size: int = Field(21, ge=3, description="sort, all: median window across the detector (small stripes)")
    large_size: int = Field(61, ge=3, description="all: median window for large and dead stripes")
    snr: float = Field(3.0, gt=0, description="all: how far a column must stand out to be a stripe")


class PhaseRetrieval(_Frozen):
    """Paganin single-distance phase retrieval on projections."""

    pixel_size_um: float = Field(..., gt=0)
    distance_mm: float = Field(..., gt=0)
    energy_kev: float = Field(..., gt=0)
    delta_beta: float = Field(1000.0, gt=0, description="delta/beta ratio of the material")


class ReconParams(_Frozen):
    """Parameters of one reconstruction (normalisation through back-projection)."""

    algorithm: Literal["fourier", "fbp"] = Field(
        "fourier", description="fourier: NUFFT gridding (fast on CPU); fbp: real-space back-projection"
    )
    engine: Literal["auto", "native", "tomopy"] = Field(
        "auto", description="auto: TomoPy wherever it is importable (HPC images), else native"
    )
    filter_name: FilterName = "shepp"
    butterworth_order: int = Field(2, ge=1)
    filter_cutoff: float = Field(1.0, gt=0, le=1.0, description="fraction of Nyquist")
    center: FiniteFloat | Literal["auto"] = Field(
        "auto", description="rotation axis as a 0-based detector column (pixel-index convention)"
    )
    center_method: Literal["vo", "pairs", "halfturn", "auto"] = Field(
        "auto", description="auto: halfturn for 360-degree scans, Vo + sharpness for 180-degree ones"
    )
    center_search_width: float | None = Field(
        None, gt=0, description="px either side of the detector middle (full-field scans); "
        "default: a quarter of the detector width, as far as the methods reach"
    )
    half_acquisition: Literal["auto", "on", "off"] = Field(
        "auto", description="360-degree offset-axis scan stitched to a 180-degree one of the full width; "
        "auto: when the axis lies in the outer quarter of the detector"
    )
    pad: bool = Field(True, description="edge-pad sinograms to avoid wrap-around")
    minus_log_clip: float = Field(1e-6, gt=0, description="transmission floor before -log")
    flat_interpolation: bool = Field(
        True, description="interpolate flats taken before and after the projections in time"
    )
    dezinger_threshold: float | None = Field(
        None, gt=0, description="remove outliers brighter than median + threshold * sigma"
    )
    ring_removal: RingRemoval | None = None
    phase_retrieval: PhaseRetrieval | None = None
    circular_mask: float | None = Field(0.95, gt=0, le=1.0, description="ratio of the radius kept")
    binning: int = Field(1, ge=1, le=8)
    rows: tuple[int, int] | None = Field(None, description="[start, stop) detector rows to reconstruct")
    chunk_slices: int = Field(16, ge=1)
    device: Literal["auto", "cpu", "gpu"] = "auto"
    dtype: Literal["float32"] = "float32"

    @model_validator(mode="after")
    def _check_rows(self) -> ReconParams:
        if self.rows is not None and not (0 <= self.rows[0] < self.rows[1]):
            raise ValueError(f"rows must be [start, stop) with 0 <= start < stop, got {self.rows}")
        return self

    # -- identity -------------------------------------------------------------------------
    def canonical_json(self) -> str:
        """JSON with sorted keys: the stable text the hash is taken from."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def params_hash(self) -> str:
        """First 16 hex digits of the SHA-256 of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    # -- files ----------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> ReconParams:
        """Read YAML or JSON; unknown keys and impossible values raise a ``ValidationError``."""
        from ..untrusted.outside_files import load_yaml_file

        # untrusted: a regular file, bounded, no YAML aliases; a refusal never repeats its content
        data: Any = load_yaml_file(path, MAX_PARAMS_FILE_BYTES, "parameters file") or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of ReconParams fields, got {type(data).__name__}")
        return cls.model_validate(data)

    def with_updates(self, **changes: Any) -> ReconParams:
        """A validated copy with some fields changed (``model_copy`` skips validation)."""
        return type(self).model_validate({**self.model_dump(), **changes})
