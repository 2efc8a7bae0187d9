"""Secrets masked in everything this package writes: messages, logs, JSON, records, payloads.

Why one place: a secret reaches an output by many roads (a Tiled URI with ``user:password@`` in
the settings, an ``?api_key=`` a user pasted, an exception text that quotes the URL it failed
on, the command line recorded in provenance). Each output boundary (the command line's messages
and prints, every log record of this package, the web page's JSON, provenance, job records,
SciCat payloads) passes what it writes through :func:`mask_secrets`, so no road is missed.

Masked: the user-information of any URL (``scheme://***@host``: a user name alone can be a
token), the values of query or form parameters named like a secret (``api_key=***``), the
credentials of ``Authorization``-style words (``Apikey ***``, ``Bearer ***``), and every
occurrence of a value held by an environment variable named like a secret (``TILED_API_KEY``,
``SCICAT_TOKEN``, ``GLOBUS_CLIENT_SECRET``...), at least 8 characters long.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
#: names of parameters, fields and environment variables whose values are secrets
SECRET_NAME = re.compile(r"(api[_-]?key|apikey|token|secret|passw(or)?d|passwd|credential|signature|sig)",
                         re.IGNORECASE)
#: shortest environment value masked wherever it appears (shorter ones would mask ordinary words)
MIN_SECRET_CHARS = 8

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@?#'\"]+)@")
#: ``name=value`` in a query, a form or a command line, the name like a secret
_PARAM = re.compile(
    r"(?P<name>\b[A-Za-z0-9_-]*(?:api[_-]?key|apikey|token|secret|passw(?:or)?d|passwd|credential|signature)"
    r"[A-Za-z0-9_-]*|\bsig)(?P<sep>=)(?P<value>[^\s&'\",;:)}\]]+)", re.IGNORECASE)
#: the credentials of an Authorization header quoted in a message
_SCHEME_WORD = re.compile(r"\b(?P<scheme>Apikey|Bearer)(?P<sep>\s+)(?P<value>[A-Za-z0-9._~+/=-]{4,})",
                          re.IGNORECASE)


def _known_secrets() -> list[str]:
    """Values of environment variables named like secrets, longest first (a prefix never wins)."""
    found = {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_CHARS}
    return sorted(found, key=len, reverse=True)


def mask_text(text: str) -> str:
    """``text`` with every secret it carries replaced by ``***`` (see the module docstring)."""
    if not text:
        return text
    for value in _known_secrets():
        if value in text:
            text = text.replace(value, MASK)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _PARAM.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)
    return _SCHEME_WORD.sub(lambda m: f"{m['scheme']}{m['sep']}{MASK}", text)


def _secret_entry(key: object, value: object) -> bool:
    """A mapping entry that holds a secret itself (``password: ...``), not the name of the
    variable holding one (``api_key_env: TILED_API_KEY``)."""
    return (isinstance(key, str) and bool(SECRET_NAME.search(key)) and not key.endswith("_env")
            and isinstance(value, str) and value != "")


def mask_secrets(value: Any) -> Any:
    """``value`` (text, or JSON-like data nested in mappings and sequences) with secrets masked;
    a mapping entry whose key is named like a secret has its whole value masked."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        return {k: MASK if _secret_entry(k, v) else mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    if isinstance(value, tuple):
        return tuple(mask_secrets(v) for v in value)
    return value


# -- logs -------------------------------------------------------------------------------------------
PACKAGE = __name__.split(".")[0]  # "bluesky_tomo_hpc"


def _masked_arg(arg: Any) -> Any:
    if arg is None or isinstance(arg, bool | int | float):
        return arg  # %d, %.1f keep working
    if isinstance(arg, Mapping):
        return {k: _masked_arg(v) for k, v in arg.items()}
    text = str(arg)
    masked = mask_text(text)
    return arg if masked == text else masked


def mask_record(record: logging.LogRecord) -> None:
    """Mask a log record in place: its message, each argument (formatters such as uvicorn's
    access log read the arguments themselves) and its traceback, formatted now and kept as the
    record's text (handlers would otherwise format the exception anew)."""
    if isinstance(record.msg, str):
        record.msg = mask_text(record.msg)
    if isinstance(record.args, Mapping):
        record.args = _masked_arg(record.args)
    elif isinstance(record.args, tuple):
        record.args = tuple(_masked_arg(a) for a in record.args)
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = mask_text(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None


class MaskFilter(logging.Filter):
    """A handler filter masking every record it passes (the command line's and servers' handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        mask_record(record)
        return True


class _Factory:
    """A log-record factory masking the records of this package's loggers (others pass as they are).

    Why a factory, not a filter: a filter on the package's logger does not see its children's
    records, and the handlers belong to whoever runs us (an IPython profile, systemd).
    """

    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        if record.name == PACKAGE or record.name.startswith(PACKAGE + "."):
            mask_record(record)
        return record


def mask_package_logs() -> None:
    """Install the masking record factory once per process (idempotent)."""
    current = logging.getLogRecordFactory()
    if not isinstance(current, _Factory):
        logging.setLogRecordFactory(_Factory(current))


def with_mask_filter(config: dict[str, Any]) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` configuration with :class:`MaskFilter` on every handler
    (uvicorn's access log prints request paths, and ``?api_key=`` is one of them)."""
    import copy

    config = copy.deepcopy(config)
    config["filters"] = {**config.get("filters", {}), "mask_secrets": {"()": MaskFilter}}
    for handler in config.get("handlers", {}).values():
        handler["filters"] = [*handler.get("filters", []), "mask_secrets"]
    return config


def uvicorn_log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's own logging configuration at ``level``, secrets masked."""
    from uvicorn.config import LOGGING_CONFIG

    config = with_mask_filter(LOGGING_CONFIG)
    for logger in config.get("loggers", {}).values():
        logger["level"] = level.upper()
    return config
