"""Optional Python packages: the one way this package imports them.

Why one way: a beamline installs the core (``pip install bluesky-tomo-hpc``: the demo, ``recon``,
the live preview, full volumes, local MPI batch jobs, 0MQ documents, Tiled and the web page);
packages for services a site may lack come as extras (:data:`EXTRAS`). A feature that needs one
calls :func:`require` where it is chosen (a command, an executor, a setting), before any work, so
a missing package is one line naming the feature and the extra to install (exit 2 from the
command line), never an internal error in a thread, and never taken for a service that cannot be
reached. :func:`optional` is for what is used when present (CuPy on a machine with a GPU).
``tests/test_packaging.py`` checks :data:`EXTRAS` against ``pyproject.toml`` and that nothing in
the package imports these packages another way.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

#: the distribution name users install
DISTRIBUTION = "bluesky-tomo-hpc"

#: top-level module -> (the extra that installs it, its distribution on PyPI)
EXTRAS: dict[str, tuple[str, str]] = {
    "pvaccess": ("pva", "pvapy"),
    "sfapi_client": ("hpc", "sfapi-client"),
    "globus_sdk": ("hpc", "globus-sdk"),
    "globus_compute_sdk": ("hpc", "globus-compute-sdk"),
    "pyscicat": ("scicat", "pyscicat"),
    "cupy": ("gpu", "cupy-cuda12x"),
    "cupyx": ("gpu", "cupy-cuda12x"),
    "cufinufft": ("gpu", "cufinufft"),
}

#: what no extra installs (no wheels on PyPI; a program), and how to get it
ELSEWHERE: dict[str, str] = {
    "tomopy": "conda install -c conda-forge tomopy",
    "mpiexec": "pip install mpich (Linux, macOS), or put your MPI's mpiexec on PATH",
}


class MissingPackage(ModuleNotFoundError):
    """A feature's package is not installed; ``str(exc)`` is the one line to show the user.

    A :class:`ModuleNotFoundError`, so code that falls back when a package is absent still does.
    """

    def __init__(self, feature: str, module: str):
        self.feature = feature
        top = module.partition(".")[0]
        package = EXTRAS[top][1] if top in EXTRAS else top
        super().__init__(f"{feature} needs {package}, which is not installed: {how_to_install(top)}",
                         name=module)

    def __str__(self) -> str:
        return str(self.msg)


def how_to_install(module: str) -> str:
    """The command that installs ``module``'s package: its extra, or elsewhere, or a reinstall
    (a module of the core missing means a damaged installation)."""
    top = module.partition(".")[0]
    if top in EXTRAS:
        return f"pip install '{DISTRIBUTION}[{EXTRAS[top][0]}]'"
    if top in ELSEWHERE:
        return ELSEWHERE[top]
    return (f"{DISTRIBUTION} itself installs it, so this installation is incomplete: "
            f"pip install --force-reinstall {DISTRIBUTION}")


def require(module: str, feature: str) -> ModuleType:
    """``import module``, or :class:`MissingPackage` naming ``feature`` (what the user chose, in
    their words: "the NERSC executor (jobs.executor: nersc)") and how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if isinstance(exc, MissingPackage):
            raise
        raise MissingPackage(feature, exc.name or module) from exc


def installed(module: str) -> bool:
    """True when ``module`` would import, without importing it (some take seconds: TomoPy)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a half-imported module
        return False


def optional(module: str) -> ModuleType | None:
    """``module`` if it imports, else ``None``: for a package used only when present. Any error
    counts as absent: CuPy's import fails with CUDA errors, not only ImportError, on machines
    without a driver."""
    try:
        return importlib.import_module(module)
    except Exception:
        return None


def missing_package(exc: BaseException | None) -> str | None:
    """The one line for a package missing behind ``exc`` (itself, or what it was raised from),
    else ``None``. Why the chain: writers wrap the cause (``VolumeWriteError from exc``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MissingPackage):
            return str(exc)
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return f"the Python module {exc.name} is not installed: {how_to_install(exc.name)}"
        exc = exc.__cause__
    return None
