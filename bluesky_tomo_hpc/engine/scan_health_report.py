"""What a plan reads about a scan's health: the findings so far, and which frames they concern.

The same object whether the health came from the in-process pipeline (``health_listeners``) or a
remote worker's 0MQ preview stream (the ``scan_health`` entry of each preview's metadata).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..model import ScanSpec
from .scan_health_findings import SEVERITIES as SEVERITY_ORDER

log = logging.getLogger(__name__)

#: findings whose projections hold no usable signal (the beam, not the sample, was the problem):
#: what a plan re-takes and what staging leaves out of a reconstruction
BEAM_KINDS = ("beam_loss", "shutter_closed")
#: leave spoiled projections out only while at least this share of the projections remains; below
#: it the scan as a whole is bad (its health says so) and a reconstruction of everything is the
#: more honest picture
MIN_KEPT_SHARE = 0.5


@dataclass(frozen=True)
class ScanHealthReport:
    """One run's health at one moment: ``findings`` are dicts with ``kind``, ``severity``,
    ``first``/``last`` (projection indices), ``n_frames``, angles, ``value`` and ``message``."""

    run_uid: str
    status: str
    n_projections: int
    final: bool
    findings: tuple[Mapping[str, Any], ...] = ()
    summary: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_summary(cls, run_uid: str, summary: Mapping[str, Any],
                     final: bool | None = None) -> ScanHealthReport:
        """From :meth:`ScanHealth.summary` as it travels (JSON): unknown or broken entries are
        dropped, never trusted (it may come from the network)."""
        findings = tuple(f for f in summary.get("findings", ()) if isinstance(f, Mapping)
                         and isinstance(f.get("first"), int) and isinstance(f.get("last"), int))
        status = summary.get("status")
        n = summary.get("n_projections")
        return cls(run_uid=str(run_uid), status=status if status in SEVERITY_ORDER else "ok",
                   n_projections=n if isinstance(n, int) else 0,
                   final=bool(summary.get("final")) if final is None else final, findings=findings,
                   summary=summary)

    def alarms(self, at_least: str = "warning") -> list[Mapping[str, Any]]:
        """Findings of ``at_least`` that severity (``"warning"``: warnings and errors)."""
        floor = SEVERITY_ORDER.index(at_least)
        return [f for f in self.findings if f.get("severity") in SEVERITY_ORDER
                and SEVERITY_ORDER.index(f["severity"]) >= floor]

    def frames(self, kinds: Iterable[str] | str | None = None, at_least: str = "warning") -> list[int]:
        """Projection indices named by the findings (of ``kinds``, of ``at_least`` that severity):
        what a plan re-takes. Flat-frame findings (``role`` "flat") are not projections."""
        wanted = {kinds} if isinstance(kinds, str) else (set(kinds) if kinds is not None else None)
        out: set[int] = set()
        for f in self.alarms(at_least):
            if f.get("role", "projection") != "projection":
                continue
            if wanted is not None and f["kind"] not in wanted:
                continue
            out.update(range(int(f["first"]), int(f["last"]) + 1))
        return sorted(out)

    @property
    def ok(self) -> bool:
        """No warning and no error so far."""
        return not self.alarms()


def spoiled_projections(spec: ScanSpec, n_projections: int) -> list[int]:
    """Projection indices the scan's health found without beam (beam loss, closed shutter), to be
    left out of the reconstruction: empty when the health found none, or when leaving them out
    would keep less than :data:`MIN_KEPT_SHARE` of the scan."""
    summary = spec.metadata.get("scan_health")
    if not isinstance(summary, dict):
        return []
    named = [i for i in ScanHealthReport.from_summary(spec.run_uid, summary).frames(BEAM_KINDS)
             if 0 <= i < n_projections]
    if n_projections - len(named) < MIN_KEPT_SHARE * n_projections:
        log.warning("run %s: %d of %d projections had no beam; all are reconstructed (too few would "
                    "remain without them): see the scan's health", spec.run_uid, len(named), n_projections)
        return []
    return named
