"""Re-reconstruct the tomography runs of a catalog with new parameters.

Runs are found with Tiled queries, recognised as tomography by the same rules as the live
callback, and replayed through the same router and sinks, so a re-processed run gives the same
result a live one would. Documents are rebuilt on the client
(:func:`~bluesky_tomo_hpc.sources.tiled_documents.run_documents`), so any Tiled that
``TiledWriter`` writes to will do, without a server-side exporter. Entries that are not runs are
skipped; a run without its stop document (what a Tiled crash leaves) is reported ``incomplete``
and the others go on (``allow_incomplete`` reconstructs what it has). A run that already has a
reconstruction with the same parameters hash is skipped: running the same request twice does
nothing the second time, and an interrupted one picks up where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.params import ReconParams
from ..results.tiled_results import find_reconstructions
from ..settings import Settings
from ..sinks.sink import Sink
from ..sources.recognise import recognise
from ..sources.tiled_documents import is_bluesky_run
from .scan_sinks import SinkFactory

log = logging.getLogger(__name__)


class ReprocessError(RuntimeError):
    """The request cannot be carried out (nothing matched, catalog unreachable...)."""


@dataclass(frozen=True)
class RunQuery:
    """Which runs to consider; every given criterion must hold."""

    scan_ids: tuple[int, int] | None = None  # [first, last] inclusive
    since: str | None = None
    until: str | None = None
    plan_name: str | None = None
    sample: str | None = None  # start["sample"]["name"], or a bare-string start["sample"]
    uids: tuple[str, ...] = ()
    series: str | None = None  # start["series"]["id"]
    #: (key, op, value) criteria on any start-document key, e.g. metadata.queries.parse_where(...)
    where: tuple[tuple[str, str, Any], ...] = ()

    def describe(self) -> str:
        parts = [f"{k}={v!r}" for k, v in vars(self).items() if v not in (None, ())]
        return ", ".join(parts) or "all runs"


@dataclass
class RunOutcome:
    uid: str
    scan_id: int | None
    #: "reconstructed", "submitted", "skipped", "failed", "incomplete", "not-tomography",
    #: "calibration", "not-a-run"
    status: str
    message: str = ""
    seconds: float = 0.0


@dataclass
class ReprocessSummary:
    params_hash: str
    matched: int = 0
    outcomes: list[RunOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def lines(self) -> list[str]:
        head = (f"{self.matched} runs matched; {self.count('reconstructed')} reconstructed, "
                f"{self.count('submitted')} submitted, {self.count('skipped')} already done "
                f"(params {self.params_hash}), {self.count('failed')} failed, "
                f"{self.count('incomplete')} incomplete (no stop document), "
                f"{self.count('not-tomography')} not tomography, "
                f"{self.count('calibration')} dark/flat runs, {self.count('not-a-run')} not runs")
        return [head] + [f"  {o.uid[:8]} scan {o.scan_id}: {o.status} {o.message}".rstrip()
                         for o in self.outcomes]


def search_runs(catalog: Any, query: RunQuery) -> Any:
    """Apply ``query`` to a CatalogOfBlueskyRuns client with Tiled / bluesky-tiled-plugins queries
    (all but ``sample`` and ``uids``, which have alternatives: see :func:`_matching`)."""
    from bluesky_tiled_plugins.queries import ScanIDRange, TimeRange
    from tiled.queries import Key

    from ..metadata.queries import series_query, where_query

    results = catalog
    if query.scan_ids is not None:
        first, last = query.scan_ids
        results = results.search(ScanIDRange(int(first), int(last) + 1))
    if query.since or query.until:
        results = results.search(TimeRange(since=query.since, until=query.until))
    if query.plan_name:
        results = results.search(Key("plan_name") == query.plan_name)
    if query.series:
        results = results.search(series_query(query.series))
    for key, op, value in query.where:
        results = results.search(where_query(key, op, value))
    return results


def _matching(catalog: Any, query: RunQuery) -> Iterator[tuple[str, Any]]:
    """``(uid, run)`` pairs; several uids, and the two ways a sample name is stored, are searched
    one by one (Tiled ANDs the criteria of a search, and bluesky-tiled-plugins refuses several
    PartialUIDs in one query)."""
    from bluesky_tiled_plugins.queries import PartialUID

    from ..metadata.queries import sample_queries

    branches = [search_runs(catalog, query)]
    if query.sample:
        branches = [b.search(q) for b in branches for q in sample_queries(query.sample)]
    if query.uids:
        branches = [b.search(PartialUID(p)) for b in branches for p in query.uids]
    if len(branches) == 1:
        yield from branches[0].items()
        return
    seen: set[str] = set()
    for branch in branches:
        for uid, run in branch.items():
            if uid not in seen:
                seen.add(uid)
                yield uid, run


def tomography_runs(catalog: Any, query: RunQuery) -> Iterator[tuple[str, Any, str | None]]:
    """Yield ``(uid, run, layout)`` for every matching entry; layout None means not tomography,
    ``NOT_A_RUN`` an entry that is no Bluesky run (a plain container or array beside the runs)."""
    for uid, run in _matching(catalog, query):
        if not is_bluesky_run(run):
            log.warning("catalog entry %s is not a Bluesky run; skipped", uid)
            yield uid, run, NOT_A_RUN
            continue
        try:
            layout = recognise(run.start)
        except ValueError as exc:  # start["tomo"] present but malformed
            log.warning("run %s: start['tomo'] not understood (%s); skipped", uid, exc)
            layout = None
        yield uid, run, None if layout is None else layout.layout


#: the layout :func:`tomography_runs` gives an entry that is not a Bluesky run
NOT_A_RUN = "not-a-run"

#: kinds of result that count as "reconstructed" (a live preview alone does not)
VOLUME_KINDS = ("full", "batch")


def already_reconstructed(processed: Any, uid: str, params: ReconParams) -> bool:
    """Whether ``uid`` has a full or batch volume made with ``params`` (its hash)."""
    return any(find_reconstructions(processed, raw_uid=uid, params_hash=params.params_hash, kind=k)
               for k in VOLUME_KINDS)


def run_stop(run: Any) -> dict[str, Any] | None:
    """The run's stop document, or None when Tiled never got it."""
    return (getattr(run, "metadata", None) or {}).get("stop") or None


def _replay(run: Any, sink_factory: Callable[[], Sink], catalog: Any) -> list[str]:
    """Feed a stored run's documents through the live router; returns the router's errors.
    A run without a stop is closed with one saying so (only asked for by ``allow_incomplete``)."""
    from ..sources.documents import TomoRunRouter, tiled_dark_flat_resolver
    from ..sources.tiled_documents import run_documents

    router = TomoRunRouter(sink_factory, dark_flat_resolver=tiled_dark_flat_resolver(catalog))
    start: dict[str, Any] = {}
    stopped = False
    for name, doc in run_documents(run):
        start = doc if name == "start" else start
        stopped = stopped or name == "stop"
        router(name, doc)
    if not stopped and start:
        router("stop", {"uid": f"{start['uid']}-closed-by-reprocess", "run_start": start["uid"],
                        "time": time.time(), "exit_status": "success",
                        "reason": "no stop document in the catalog: reconstructed what is there",
                        "num_events": {}})
    return [message for _, message in router.errors]


def reprocess(
    catalog: Any,
    processed: Any,
    *,
    params: ReconParams,
    query: RunQuery = RunQuery(),
    submit: Callable[[str, Any], str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    allow_incomplete: bool = False,
    settings: Settings | None = None,
) -> ReprocessSummary:
    """Reconstruct every tomography run matching ``query`` that lacks a result with ``params``.

    Each run's full volume is made as a live one is (:class:`~.sinks.factory.SinkFactory`, the
    memory budget of ``settings``), in ``settings.data_dir``; without settings, in a temporary
    folder removed at the end (the volumes are then uploaded to ``processed``).

    ``submit(uid, run)``, when given, hands a run to a batch executor instead of reconstructing
    it here and returns a job id. ``progress(done, total, uid)`` is called after each run.
    A run without a stop document is reported ``incomplete`` unless ``allow_incomplete``, which
    reconstructs the frames it has. One run's failure never stops the others.
    Raises :class:`ReprocessError` when nothing matches.
    """
    candidates = list(tomography_runs(catalog, query))
    if not candidates:
        raise ReprocessError(f"no run in the catalog matches {query.describe()}")
    summary = ReprocessSummary(params_hash=params.params_hash, matched=len(candidates))
    with contextlib.ExitStack() as stack:
        if settings is None:
            settings = Settings(data_dir=Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="tomo-reprocess-"))), jobs={"executor": "none"})
        settings = settings.model_copy(update={"recon": params, "full_volume": True})
        sinks = SinkFactory(settings, processed=processed)
        stack.callback(sinks.close)
        for i, (uid, run, layout) in enumerate(candidates):
            scan_id = run.metadata.get("start", {}).get("scan_id") if layout != NOT_A_RUN else None
            t0 = time.perf_counter()
            try:
                outcome = _one(uid, run, layout, scan_id, catalog, processed, params, sinks, submit,
                               allow_incomplete)
            except Exception as exc:  # one bad run must not stop the others
                log.exception("run %s could not be re-processed", uid)
                outcome = RunOutcome(uid, scan_id, "failed", f"{type(exc).__name__}: {exc}")
            outcome.seconds = time.perf_counter() - t0
            summary.outcomes.append(outcome)
            log.info("run %s: %s %s", uid, outcome.status, outcome.message)
            if progress is not None:
                progress(i + 1, len(candidates), uid)
    return summary


def _one(uid: str, run: Any, layout: str | None, scan_id: int | None, catalog: Any, processed: Any,
         params: ReconParams, sinks: SinkFactory, submit: Callable[[str, Any], str] | None,
         allow_incomplete: bool = False) -> RunOutcome:
    if layout == NOT_A_RUN:
        return RunOutcome(uid, scan_id, "not-a-run", "not a Bluesky run; skipped")
    if layout is None:
        return RunOutcome(uid, scan_id, "not-tomography")
    if layout == "dark_flat":
        return RunOutcome(uid, scan_id, "calibration", "dark/flat run, used by the runs that cite it")
    if already_reconstructed(processed, uid, params):
        return RunOutcome(uid, scan_id, "skipped", "already reconstructed with these parameters")
    stop = run_stop(run)
    if stop is None and not allow_incomplete:
        return RunOutcome(uid, scan_id, "incomplete", "no stop document (Tiled lost it?): complete it "
                          "with 'bluesky-tomo-hpc recover', or use --allow-incomplete")
    if stop is not None and stop.get("exit_status", "success") != "success":
        return RunOutcome(uid, scan_id, "failed", f"scan ended {stop.get('exit_status')!r}")
    if submit is not None:
        try:
            return RunOutcome(uid, scan_id, "submitted", f"job {submit(uid, run)}")
        except Exception as exc:
            return RunOutcome(uid, scan_id, "failed", f"submission failed: {exc}")
    errors = _replay(run, sinks.volume, catalog)
    sinks.service.wait()
    result = sinks.service.outcomes.pop(uid, None)
    if result is not None and result.made_elsewhere:  # another process (a second reprocess) has it
        return RunOutcome(uid, scan_id, "skipped", "made by another process")
    if result is not None and result.ok:
        return RunOutcome(uid, scan_id, "reconstructed",
                          f"centre {result.center:.2f} px in {result.seconds:.1f} s")
    reason = (result.message if result is not None else "") or "; ".join(errors) or "no frames replayed"
    return RunOutcome(uid, scan_id, "failed", reason)


def batch_submitter(monitor: Any, work_dir: Any, params: ReconParams, executor: str,
                    catalog: Any, resources: Any = None) -> Callable[[str, Any], str]:
    """A ``submit`` for :func:`reprocess` that replays a run into an on-stop batch sink: the job
    input is staged (zero-copy where frames are in files) and handed to ``monitor``'s executor;
    the journal makes a second submission of the same run + parameters reuse the first job."""
    from ..jobs.submit_sink import HPCSubmitSink

    def submit(uid: str, run: Any) -> str:
        sink = HPCSubmitSink(monitor, work_dir, params=params, executor=executor, resources=resources)
        errors = _replay(run, lambda: sink, catalog)
        sink.wait()
        if not sink.job_ids:
            why = errors + [str(e) for _, e in sink.errors]
            raise RuntimeError("; ".join(why) or "no job was created from the replayed run")
        if sink.errors:  # staging failed, the journal was unavailable, or the executor refused
            raise RuntimeError("; ".join(f"{j}: {e}" for j, e in sink.errors))
        rec = monitor.journal.get(sink.job_ids[-1])
        if rec.state in ("FAILED", "CANCELLED", "RETRY_WAIT"):
            raise RuntimeError(f"job {rec.job_id} {rec.state}: {rec.error}")
        return rec.job_id

    return submit


def notebook_progress(description: str = "re-processing") -> Callable[[int, int, str], None]:
    """A ``progress`` callback drawing a tqdm bar (a widget in Jupyter, text elsewhere)."""
    from tqdm.auto import tqdm

    bar: list[Any] = []

    def update(done: int, total: int, uid: str) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc=description, unit="run"))
        bar[0].set_postfix_str(uid[:8])
        bar[0].update(done - bar[0].n)
        if done >= total:
            bar[0].close()

    return update
