"""One configuration file (YAML) with environment overrides; secrets only from the environment.

Precedence, lowest first: built-in defaults, the file named by ``$BLUESKY_TOMO_HPC_CONFIG`` (or
passed explicitly), then variables ``BLUESKY_TOMO_HPC__SECTION__KEY=value`` (double underscores
separate levels; values are parsed as YAML, so ``8``, ``true`` and ``[1, 2]`` work).

Secrets are never read from the file: the Tiled API key comes from ``TILED_API_KEY`` (the
variable Tiled's own client reads), other services name their variables in their sections.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .engine.params import ReconParams
from .untrusted.outside_files import load_yaml_file

log = logging.getLogger(__name__)

ENV_FILE = "BLUESKY_TOMO_HPC_CONFIG"
#: the largest settings file read (a real one is a few kB)
MAX_SETTINGS_FILE_BYTES = 1024 * 1024
ENV_PREFIX = "BLUESKY_TOMO_HPC__"


# 0MQ endpoints (live previews here; the worker's --zmq and watch use the same check)
_ADDRESS = re.compile(r"tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(?P<port>\d{1,5}|\*)|(ipc|inproc)://\S+")
_LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}


def check_zmq_address(address: object, *, bind: bool = False, what: str = "0MQ address") -> str:
    """``address`` if it is a 0MQ endpoint (``tcp://HOST:PORT``, ``ipc://``, ``inproc://``), else a
    ``ValueError`` that shows the form; binding anywhere but loopback is logged as a warning,
    since a 0MQ socket has no authentication unless CURVE keys are configured."""
    m = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
    port = m.group("port") if m else None
    if m is None or (port not in (None, "*") and not 0 < int(port) < 65536):
        raise ValueError(f"{what} {address!r:.80} is not a 0MQ address; give tcp://HOST:PORT "
                         "(port 1-65535) such as tcp://127.0.0.1:5578")
    if bind and m and m.group("host") and m.group("host") not in _LOOPBACK:
        log.warning("%s %s listens beyond this host: anyone who reaches it can read or send; "
                    "prefer 127.0.0.1 and an SSH tunnel, or 0MQ CURVE keys", what, address)
    return address



class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TiledSettings(_Section):
    """Where raw runs and results live. ``uri: null`` starts the embedded server."""

    uri: str | None = None
    raw_container: str = "raw"
    processed_container: str = "processed"
    series_container: str = Field("series", description="time series: one container per series id")
    api_key_env: str = Field("TILED_API_KEY", description="environment variable holding the API key")
    writer_batch_size: int = Field(
        100, ge=1, description="events TiledWriter buffers per write (1 = every event live in Tiled, "
        "slower); frames are on disk and reach the callbacks directly either way",
    )
    register_in_place: bool | None = Field(
        None,
        description="register batch-job Zarr volumes in place (no upload): the server must be able to "
        "read the data folder. None: yes for the embedded server, no for a remote one",
    )

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env)


class PreviewSettings(_Section):
    """Live three-slice preview."""

    enabled: bool = True
    binning: int = Field(1, ge=1, le=16)
    #: slice positions as fractions of the volume (z row, y, x); 0.5 = through the centre
    positions: tuple[float, float, float] = (0.5, 0.5, 0.5)
    zmq_address: str | None = Field(None, description="0MQ PUB address for live previews, e.g. tcp://127.0.0.1:5600")
    control_address: str | None = Field(
        None, description="0MQ REP address where the running scan's slice positions are set (the web page "
        "moves them), e.g. tcp://127.0.0.1:5601; None: the positions stay where the settings put them")
    png_dir: Path | None = Field(None, description="write live TIFFs and a final PNG here")
    max_queue_mb: float = Field(256.0, gt=0, description="frames waiting for the preview; beyond it, skip")
    publish_interval_s: float = Field(0.5, ge=0, description="at most one live update per interval")
    final_budget_s: float = Field(0.5, gt=0, description="time allowed to drain the queue at stop")
    refine_center: bool = Field(True, description="check the centre on the 0/180 pair at stop")
    scan_health: bool = Field(True, description="check every frame while it comes: beam, saturation, "
                              "sample motion, flats, angles (findings in the preview's metadata)")
    journal_dir: Path | None = Field(None, description="worker: journal open runs here (restartable)")


class ScicatSettings(_Section):
    """SciCat: a raw dataset per scan, a derived dataset per reconstruction (``uri: null``: off)."""

    uri: str | None = Field(None, description="SciCat API base, e.g. https://scicat.example.org/api/v3")
    token_env: str = Field("SCICAT_TOKEN", description="environment variable holding the API token")
    pid_prefix: str = Field("", max_length=64, description="prefix of the pids this pipeline chooses "
                            "(the account must be allowed to choose pids)")
    owner: str = "beamline"
    owner_group: str = Field("ingestor", min_length=1)
    access_groups: list[str] = Field(default_factory=list)
    contact_email: str = "beamline@example.org"
    principal_investigator: str = "beamline"
    creation_location: str = Field("/facility/beamline", description="SciCat creationLocation of raw data")
    instrument_id: str | None = Field(None, description="SciCat instrument pid")
    source_host: str | None = Field(None, description="sourceFolderHost: where the files can be read")
    max_retries: int = Field(5, ge=0, description="tries after the first for transient failures")
    retry_delay_s: float = Field(30.0, gt=0, description="first retry delay; doubles each time, 1 h at most")
    timeout_s: float = Field(30.0, gt=0)

    @property
    def token(self) -> str | None:
        return os.environ.get(self.token_env)


class JobSettings(_Section):
    """Batch reconstruction after each scan."""

    executor: Literal["none", "local", "slurm", "nersc", "alcf"] = "local"
    ranks: int | None = Field(
        None, ge=1, description="MPI ranks; None: sized from the scan and a measured per-voxel cost")
    max_nodes: int = Field(1, ge=1, description="allocation: nodes a job may use (sizing refuses more)")
    cores_per_node: int | None = Field(
        None, ge=1, description="allocation: cores per node (None: this machine's)")
    max_walltime_s: int = Field(3600, ge=60, description="allocation: longest wall time a job may ask")
    memory_mb_per_node: int | None = Field(
        None, ge=256, description="allocation: memory per node (None: this machine's)")
    seconds_per_voxel_projection: float | None = Field(
        None, gt=0, description="cost model for sizing; None: measured once on this machine")
    max_retries: int = Field(3, ge=0)
    options: dict[str, Any] = Field(default_factory=dict, description="executor-specific settings")


class Settings(_Section):
    """All settings of a pipeline."""

    data_dir: Path = Field(Path("tomo_hpc_data"), description="raw HDF5, results, journal, Tiled files")
    tiled: TiledSettings = TiledSettings()
    recon: ReconParams = ReconParams()
    preview: PreviewSettings = PreviewSettings()
    jobs: JobSettings = JobSettings()
    scicat: ScicatSettings = ScicatSettings()
    full_volume: bool = Field(True, description="reconstruct the whole volume in-process at stop")
    full_volume_streaming: bool = Field(
        True, description="with recon binning > 1: bin frames as they arrive and sum the volume during the "
        "scan, so that at stop only the rest is left; where the sum cannot serve (half acquisition, "
        "another centre, darks/flats at the end, a sum over half the memory budget) the volume is made "
        "from the binned frames at the stop. false: the raw scan is read again after the stop")
    memory_budget_mb: float | None = Field(
        None, gt=0, description="memory every path may use for frames and slices (MiB); slab sizes derive "
        "from it. None: a quarter of this machine's memory, 256 MiB to 16 GiB",
    )

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "jobs.sqlite"


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def _yaml_value(name: str, raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem", None) or type(exc).__name__
        raise ValueError(
            f"environment variable {name}={raw!r:.60} is not valid YAML ({where}); "
            f"quote it (e.g. {name}='\"text\"') or fix it") from None


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``BLUESKY_TOMO_HPC__RECON__FILTER_NAME=hann`` -> ``{"recon": {"filter_name": "hann"}}``."""
    environ = dict(os.environ if environ is None else environ)
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
        if keys:
            _set_path(out, keys, _yaml_value(name, raw) if raw != "" else None)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults < file < environment. Unknown keys anywhere raise a ``ValidationError``."""
    env = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    path = path or env.get(ENV_FILE)
    if path:
        # untrusted: a regular file, bounded, no YAML aliases; a refusal never repeats its content
        loaded = load_yaml_file(path, MAX_SETTINGS_FILE_BYTES, "settings file") or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: the configuration must be a mapping of sections")
        data = loaded
    data = _merge(data, env_overrides(env))
    return Settings.model_validate(data)
