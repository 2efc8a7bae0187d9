"""Refuse a scan with bad sample metadata *before* it starts.

Why before: a typo in a temperature unit found after a two-hour in situ series loses the
series' metadata; found at ``open_run`` it costs nothing. Two ways in, one check:

* :class:`SampleValidator`, a RunEngine preprocessor (``RE.preprocessors.append(...)``, which
  :func:`install_sample_validator` does): every ``open_run`` has its sample (from the plan's
  metadata, else ``RE.md["sample"]``) validated and replaced by the normalised document;
* :func:`with_sample`, a plan wrapper that validates when the plan starts and injects the
  sample into every run the plan opens.

Bad metadata raises :class:`~bluesky_tomo_hpc.metadata.sample.SampleMetadataError` from the
plan before any document is emitted: the RunEngine returns to idle and no run exists.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from bluesky import preprocessors as bpp
from bluesky.utils import Msg

from .sample import START_KEY, SampleMetadataError, as_library, resolve_sample

Plan = Generator[Msg, Any, Any]


class SampleValidator:
    """A RunEngine preprocessor validating ``start["sample"]`` at every ``open_run``.

    ``required``: refuse a run without a sample. ``library``: a folder of sample YAML files, so
    ``RE.md["sample"] = "steel-7"`` loads ``steel-7.yml``.
    """

    def __init__(self, RE: Any = None, *, required: bool = False, library: str | Any = None):
        self.RE = RE
        self.required = required
        self.library = as_library(library)

    def check(self, msg: Msg) -> Msg:
        if msg.command != "open_run":
            return msg
        # the RunEngine merges, highest first: RE(plan, sample=...), the open_run message, RE.md
        per_call = getattr(self.RE, "_metadata_per_call", None)
        sources = [per_call or {}, msg.kwargs, getattr(self.RE, "md", None) or {}]
        raw = next((s[START_KEY] for s in sources if s.get(START_KEY) is not None), None)
        if raw is None:
            if self.required:
                raise SampleMetadataError("no sample metadata: give md={'sample': ...} or RE.md['sample']")
            return msg
        document = resolve_sample(raw, self.library).document()
        if per_call and START_KEY in per_call:
            per_call[START_KEY] = document
        return msg._replace(kwargs={**msg.kwargs, START_KEY: document})

    def __call__(self, plan: Plan) -> Plan:
        return (yield from bpp.msg_mutator(plan, self.check))


def install_sample_validator(RE: Any, *, required: bool = False, library: Any = None) -> SampleValidator:
    """Add a :class:`SampleValidator` to ``RE.preprocessors``; returns it. The unit registry is
    built now (a second or more), in the profile, not at the first scan's ``open_run``."""
    from .units import unit_registry

    unit_registry()
    validator = SampleValidator(RE, required=required, library=library)
    RE.preprocessors.append(validator)
    return validator


def with_sample(plan: Plan, sample: Any, library: Any = None) -> Plan:
    """Run ``plan`` with ``sample`` (model, mapping, YAML path or name) in every start document;
    validated when the plan starts, before its first message."""
    doc = resolve_sample(sample, as_library(library)).document()
    return (yield from bpp.inject_md_wrapper(plan, {START_KEY: doc}))


def sample_checker(library: Any = None) -> Callable[[Any], dict[str, Any]]:
    """``raw -> normalised document``: the same check for code outside a plan (queue server)."""
    lib = as_library(library)
    return lambda raw: resolve_sample(raw, lib).document()
