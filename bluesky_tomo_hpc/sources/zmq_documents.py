"""Bluesky documents over 0MQ without a code-running decoder: msgpack (+ NumPy arrays) both ends.

bluesky's ``Publisher`` and ``RemoteDispatcher`` default to ``pickle``: whoever can reach the
proxy's port then runs code in every subscriber. This module is the one place that says how
documents cross that boundary here:

* RunEngine side: ``Publisher(address, serializer=encode_document)``, or :func:`document_publisher`.
* Worker side: :func:`document_dispatcher` (a ``RemoteDispatcher`` with :func:`decode_document`,
  which also drops, with a log line, messages whose document name is not a Bluesky one, instead
  of letting them end the subscription, and documents that fail event-model's schema).

NumPy arrays travel in msgpack-numpy's layout, but decoding is ours: msgpack-numpy itself
unpickles arrays of ``dtype=object``; here object and structured dtypes are refused, like any
payload that is not a mapping. Both ends must use this codec (a pickle-speaking publisher's
messages are dropped and logged, never unpickled).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: largest document accepted (an event page of a few detector frames fits; a 21 GB scan's frames
#: travel in HDF5 files, never in documents)
MAX_DOCUMENT_BYTES = 256 << 20


class DocumentDecodeError(ValueError):
    """A 0MQ payload that is not a safe Bluesky document; the message says what it is instead."""


def encode_document(doc: Any) -> bytes:
    """A document as msgpack bytes (NumPy arrays and scalars included)."""
    import msgpack
    import msgpack_numpy

    return msgpack.packb(doc, default=msgpack_numpy.encode, use_bin_type=True)


def _numpy_hook(obj: dict) -> Any:
    import msgpack_numpy

    if b"nd" not in obj:
        return msgpack_numpy.decode(obj)  # complex numbers; plain mappings pass through
    kind, descr = obj.get(b"kind", b""), obj.get(b"type")
    if kind not in (b"", "") or not isinstance(descr, str | bytes):
        raise DocumentDecodeError("array of object or structured dtype refused (it could hold code)")
    try:
        dtype = np.dtype(descr)
    except TypeError as exc:
        raise DocumentDecodeError(f"array dtype {descr!r:.40} not understood") from exc
    if dtype.hasobject:
        raise DocumentDecodeError(f"array of dtype {dtype} refused (it could hold pointers)")
    try:
        return msgpack_numpy.decode(obj)
    except (TypeError, ValueError) as exc:  # shape and data that disagree
        raise DocumentDecodeError(f"array payload inconsistent: {exc}") from exc


def decode_document(payload: bytes) -> dict[str, Any]:
    """A document from msgpack bytes; anything else raises :class:`DocumentDecodeError`."""
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise DocumentDecodeError(f"document of {len(payload)} bytes exceeds {MAX_DOCUMENT_BYTES}")
    import msgpack

    try:
        doc = msgpack.unpackb(payload, object_hook=_numpy_hook, raw=False, strict_map_key=True)
    except DocumentDecodeError:
        raise
    except Exception as exc:  # truncated, extra data, unknown ext type, bad utf-8, deep nesting
        raise DocumentDecodeError(f"not a msgpack document: {type(exc).__name__}: {exc}"[:200]) from exc
    if not isinstance(doc, dict):
        raise DocumentDecodeError(f"a document must be a mapping, not {type(doc).__name__}")
    return doc


def document_publisher(address: str, *, prefix: bytes = b"", **kwargs: Any) -> Any:
    """bluesky's ``Publisher`` speaking this module's codec (for ``RE.subscribe``)."""
    from bluesky.callbacks.zmq import Publisher

    return Publisher(address, prefix=prefix, serializer=encode_document, **kwargs)


def _dispatcher_class() -> type:
    from bluesky.callbacks.zmq import RemoteDispatcher
    from event_model import DocumentNames, schema_validators

    class DocumentDispatcher(RemoteDispatcher):
        """``RemoteDispatcher`` with :func:`decode_document`, dropping (with a log line) any
        message that is not ``prefix name document`` with a Bluesky document name and a
        document that event-model's schema for that name accepts.

        Why its own receive loop: bluesky's ends the subscription on an unknown document name
        (``DocumentNames[name]`` raises inside it), so one stray message would stop the worker.
        """

        def __init__(self, address: Any, **kwargs: Any):
            kwargs.setdefault("deserializer", decode_document)
            super().__init__(address, **kwargs)
            self.dropped = 0

        def _drop(self, why: str) -> None:
            self.dropped += 1
            log.warning("0MQ message dropped: %s", why)

        async def _poll(self) -> None:
            while True:
                message = await self._socket.recv()
                parts = message.split(b" ", 2)
                if len(parts) != 3:
                    self._drop("not 'prefix name document'")
                    continue
                prefix, raw_name, payload = parts
                if self._prefix and prefix != self._prefix:
                    continue
                try:
                    name = DocumentNames[raw_name.decode("ascii")]
                except (UnicodeDecodeError, KeyError):
                    self._drop(f"unknown document name {raw_name[:40]!r}")
                    continue
                try:
                    doc = self._deserializer(payload)
                    validator = schema_validators.get(name)
                    if validator is not None:  # wrong types would fail deep in the worker instead
                        validator.validate(doc)
                except Exception as exc:  # noqa: BLE001 - any decoder or schema fault drops one message
                    self._drop(f"{name.value} document: {str(exc).splitlines()[0][:200]}")
                    continue
                self.loop.call_soon(self.process, name, doc)

    return DocumentDispatcher


def document_dispatcher(address: str, **kwargs: Any) -> Any:
    """A :class:`DocumentDispatcher` (bluesky imported only when a worker subscribes)."""
    return _dispatcher_class()(address, **kwargs)
