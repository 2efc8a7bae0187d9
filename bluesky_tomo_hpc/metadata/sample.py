"""What was in the beam: the sample schema stored as ``start["sample"]``.

Why a schema: the ALS paper names the absence of standardised sample metadata as a major gap;
instrument metadata reached SciCat, sample provenance, preparation, in situ conditions and the
material class did not. A pydantic model makes every scan say the same things the same way
(validated *before* the scan starts, see :mod:`bluesky_tomo_hpc.metadata.validate`), and the
same dictionary travels into Tiled (raw and processed), provenance files and SciCat.

A sample comes as a mapping, a YAML file (``yaml.safe_load``, at most 256 kB), or a name looked
up in a folder of ``<name>.yml`` files; a bare string ``"a"`` means ``{"name": "a"}``.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..model import UnsafeNameError
from ..untrusted.outside_files import UntrustedFileError, load_yaml_file, resolve_inside, validation_line
from .units import (
    AnyQuantity,
    Current,
    Duration,
    FlowRate,
    Force,
    Fraction,
    MagneticField,
    Pressure,
    Strain,
    Temperature,
    Voltage,
)

#: the key of the start document
START_KEY = "sample"
SCHEMA_VERSION = 1
MAX_FILE_BYTES = 256 * 1024
#: sample names and ids: letters, digits and ._- (they become file names and SciCat ids)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

MaterialCategory = Literal[
    "metal", "alloy", "ceramic", "glass", "polymer", "composite", "semiconductor", "mineral",
    "rock", "soil", "biological", "medical", "food", "battery", "catalyst", "building-material",
    "fluid", "other",
]


class SampleMetadataError(ValueError):
    """Sample metadata refused; the message names the field and the problem in one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=2000)

    @field_validator("*", mode="before")
    @classmethod
    def _no_control_characters(cls, v: Any) -> Any:
        if isinstance(v, str) and any(ord(c) < 32 and c not in "\t\n" for c in v):
            raise ValueError("control characters are not allowed")
        return v


class Material(_Strict):
    """What the sample is made of, in a small fixed vocabulary plus free detail."""

    category: MaterialCategory
    composition: str | None = Field(None, max_length=200, description="formula or alloy name, e.g. Ti-6Al-4V")
    phase: str | None = Field(None, max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=32)


class Provenance(_Strict):
    """Where the sample came from."""

    origin: str | None = Field(None, max_length=200, description="supplier, lab, field site")
    batch: str | None = Field(None, max_length=200)
    parent: str | None = Field(None, max_length=200, description="id of the sample it was cut from")
    received: _dt.date | None = None
    proposal: str | None = Field(None, max_length=100)
    owner: str | None = Field(None, max_length=200)
    contact_email: str | None = Field(None, max_length=200, pattern=r"^[^@\s]+@[^@\s]+$")


class PreparationStep(_Strict):
    """One step of the preparation (cut, polished, annealed...), with optional quantities."""

    step: str = Field(max_length=200)
    date: _dt.date | None = None
    details: str | None = None
    parameters: dict[str, AnyQuantity] = Field(default_factory=dict, max_length=32)


class Conditions(_Strict):
    """In situ conditions during the scan; each quantity carries units checked for dimension."""

    temperature: Temperature | None = None
    pressure: Pressure | None = None
    atmosphere: str | None = Field(None, max_length=100, description="e.g. air, vacuum, Ar, 5% H2 in N2")
    load: Force | None = None
    strain: Strain | None = None
    humidity: Fraction | None = Field(None, description="relative humidity, 0-100 %")
    voltage: Voltage | None = None
    current: Current | None = None
    magnetic_field: MagneticField | None = None
    flow_rate: FlowRate | None = None
    elapsed: Duration | None = Field(None, description="time since the in situ process started")
    other: dict[str, AnyQuantity] = Field(default_factory=dict, max_length=32)


class SampleMetadata(_Strict):
    """``start["sample"]``, schema version 1."""

    name: str = Field(pattern=NAME_PATTERN)
    id: str | None = Field(None, pattern=NAME_PATTERN, description="barcode / SciCat sampleId")
    description: str | None = None
    material: Material | None = None
    provenance: Provenance | None = None
    preparation: list[PreparationStep] = Field(default_factory=list, max_length=64)
    conditions: Conditions | None = None
    schema_version: Literal[1] = SCHEMA_VERSION

    def document(self) -> dict[str, Any]:
        """The JSON-able dict stored in the start document (empty fields left out)."""
        doc = self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        return {**doc, "schema_version": self.schema_version}

    def with_conditions(self, conditions: Mapping[str, Any]) -> SampleMetadata:
        """A copy with ``conditions`` merged over the current ones (validated)."""
        current = self.conditions.model_dump(exclude_none=True) if self.conditions else {}
        merged = {**current, **dict(conditions)}
        return parse_sample({**self.model_dump(exclude_none=True), "conditions": merged})


def _one_line(exc: ValidationError) -> str:
    return validation_line(exc.errors(), limit=5)


def parse_sample(raw: Any) -> SampleMetadata:
    """A :class:`SampleMetadata` from a model, a mapping or a bare name; raises
    :class:`SampleMetadataError` with a one-line reason."""
    if isinstance(raw, SampleMetadata):
        return raw
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise SampleMetadataError(f"sample metadata must be a mapping or a name, got {type(raw).__name__}")
    try:
        return SampleMetadata.model_validate(dict(raw))
    except ValidationError as exc:
        raise SampleMetadataError(f"sample metadata refused: {_one_line(exc)}") from None


def load_sample_file(path: str | Path) -> SampleMetadata:
    """Read one sample YAML file (untrusted: a regular file, size-capped, no YAML aliases; a
    refusal never repeats its content) and validate it."""
    p = Path(path)
    try:
        data = load_yaml_file(p, MAX_FILE_BYTES, "sample file")
    except UntrustedFileError as exc:
        raise SampleMetadataError(str(exc)) from None
    try:
        return parse_sample(data)
    except SampleMetadataError as exc:
        raise SampleMetadataError(f"{p.name}: {exc}") from None


class SampleLibrary:
    """A folder of ``<name>.yml`` sample files, looked up by name, never outside the folder: a
    file that is a symbolic link out of it is refused (the one rule of ``untrusted/``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()

    def path_of(self, name: str) -> Path:
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            raise SampleMetadataError(f"sample name {str(name)[:40]!r} must match {NAME_PATTERN}")
        for suffix in (".yml", ".yaml"):
            candidate = self.folder / f"{name}{suffix}"
            if candidate.is_file() or candidate.is_symlink():
                try:
                    return resolve_inside(self.folder, candidate.name, f"sample file {candidate.name}")
                except UnsafeNameError as exc:
                    raise SampleMetadataError(str(exc)) from None
        raise SampleMetadataError(f"no sample file {name}.yml in {self.folder}")

    def get(self, name: str) -> SampleMetadata:
        sample = load_sample_file(self.path_of(name))
        if sample.name != name:
            raise SampleMetadataError(f"{name}.yml describes sample {sample.name!r}, not {name!r}")
        return sample

    def has(self, name: str) -> bool:
        """Whether the folder holds an entry ``name`` (even one :meth:`get` refuses, so a refused
        file is reported, not silently replaced by a bare name)."""
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            return False
        return any((self.folder / f"{name}{s}").is_file() or (self.folder / f"{name}{s}").is_symlink()
                   for s in (".yml", ".yaml"))


def as_library(library: SampleLibrary | str | Path | None) -> SampleLibrary | None:
    """A folder (or None) as a :class:`SampleLibrary`."""
    return library if library is None or isinstance(library, SampleLibrary) else SampleLibrary(library)


def resolve_sample(raw: Any, library: SampleLibrary | None = None) -> SampleMetadata:
    """Whatever a user passed as the sample -> validated metadata: a model, a mapping, a path to
    a YAML file, or a name (looked up in ``library`` when it has that file, else ``{"name": ...}``)."""
    if isinstance(raw, Path):
        return load_sample_file(raw)
    if isinstance(raw, str) and raw.endswith((".yml", ".yaml")):
        return load_sample_file(raw)
    if isinstance(raw, str) and library is not None and library.has(raw):
        return library.get(raw)
    return parse_sample(raw)


def sample_name(sample: Any) -> str | None:
    """The sample's name from ``start["sample"]`` as stored (a dict, or a legacy bare string)."""
    if isinstance(sample, Mapping):
        name = sample.get("name")
        return str(name) if name is not None else None
    return str(sample) if sample is not None else None
