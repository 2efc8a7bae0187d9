"""Globus Transfer: checksum-synchronised copies between two collections.

Done means: the Transfer service reports ``SUCCEEDED`` *and* every item is then found at the
destination with the size it has at the source (``operation_stat``). A ``FAILED`` task, a task
stuck on ``PERMISSION_DENIED``/``FILE_NOT_FOUND`` (cancelled here: Globus would retry forever),
or a size mismatch raises :class:`TransferError` -- never a quiet success. Credentials come from
the environment only (``GLOBUS_CLIENT_ID``/``GLOBUS_CLIENT_SECRET``), read when a client is
built, never at import.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ...extras import require
from .mover import TransferError, TransferResult

#: nice_status values that will not pass by waiting
PERMANENT_NICE = {"PERMISSION_DENIED", "FILE_NOT_FOUND", "ENDPOINT_ERROR", "QUOTA_EXCEEDED"}
#: fatal_error codes of a FAILED task that a new transfer cannot fix (others, e.g. ENDPOINT_ERROR
#: after the service's own retries ran out, may pass: the task is retried as transient)
PERMANENT_FAILED = {"PERMISSION_DENIED", "FILE_NOT_FOUND"}
TRANSFER_SCOPE = "urn:globus:auth:scope:transfer.api.globus.org:all"
#: what asks for globus-sdk, in the words of the setting
GLOBUS_FEATURE = "Globus data movement (jobs.options: site and globus)"


def _globus() -> Any:
    return require("globus_sdk", GLOBUS_FEATURE)


def transfer_client_from_environment() -> Any:
    """A ``TransferClient`` authorised with client credentials from the environment."""
    globus_sdk = _globus()

    cid, secret = os.environ.get("GLOBUS_CLIENT_ID"), os.environ.get("GLOBUS_CLIENT_SECRET")
    if not cid or not secret:
        raise TransferError("Globus needs GLOBUS_CLIENT_ID and GLOBUS_CLIENT_SECRET in the environment")
    auth = globus_sdk.ConfidentialAppAuthClient(client_id=cid, client_secret=secret)
    return globus_sdk.TransferClient(authorizer=globus_sdk.ClientCredentialsAuthorizer(auth, TRANSFER_SCOPE))


class GlobusMover:
    """Copies from ``source_endpoint`` to ``destination_endpoint`` (collection UUIDs)."""

    name = "globus"

    def __init__(
        self,
        client: Any,
        source_endpoint: str,
        destination_endpoint: str,
        *,
        poll_s: float = 5.0,
        timeout_s: float = 3600.0,
        sleep: Any = time.sleep,
    ):
        _globus()  # absent: one line naming the hpc extra, before any transfer
        self.client, self.src_ep, self.dst_ep = client, source_endpoint, destination_endpoint
        self.poll_s, self.timeout_s, self._sleep = poll_s, timeout_s, sleep

    def _endpoint(self, at: str) -> str:
        return self.dst_ep if at == "destination" else self.src_ep

    def _api(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        globus_sdk = _globus()

        try:
            return fn(*args, **kw)
        except globus_sdk.TransferAPIError as exc:
            if exc.http_status == 401:
                raise TransferError(
                    f"Globus {what}: 401 {exc.code}: {exc.message}: the Globus token is expired or "
                    "revoked (renew the client credentials GLOBUS_CLIENT_ID/GLOBUS_CLIENT_SECRET)"
                ) from exc
            transient = exc.http_status >= 500 or exc.http_status == 429
            raise TransferError(
                f"Globus {what}: {exc.http_status} {exc.code}: {exc.message}", transient=transient
            ) from exc
        except globus_sdk.NetworkError as exc:
            raise TransferError(f"Globus {what}: network error {exc}", transient=True) from exc

    def submit(self, source: str, destination: str, *, recursive: bool = False, label: str = "") -> str:
        globus_sdk = _globus()

        data = globus_sdk.TransferData(
            self.src_ep,
            self.dst_ep,
            label=label or "bluesky_tomo_hpc",
            sync_level="checksum",
            verify_checksum=True,
        )
        data.add_item(source, destination, recursive=recursive)
        return str(self._api("submit_transfer", self.client.submit_transfer, data)["task_id"])

    def start(self, source: str, destination: str, *, recursive: bool = False, label: str = "") -> str:
        """Submit a transfer (see :meth:`submit`); the task id is the handle :meth:`check` follows."""
        return self.submit(source, destination, recursive=recursive, label=label)

    def cancel(self, task_id: str) -> None:
        """Cancel a transfer task (a cancel of a task that already ended is not an error)."""
        globus_sdk = _globus()

        try:
            self.client.cancel_task(task_id)
        except globus_sdk.TransferAPIError as exc:
            if exc.code in ("TaskComplete", "ClientError.NotFound"):
                return
            raise TransferError(
                f"Globus cancel_task {task_id}: {exc.http_status} {exc.code}: {exc.message}",
                transient=exc.http_status >= 500,
            ) from exc
        except globus_sdk.NetworkError as exc:
            raise TransferError(f"Globus cancel_task: network error {exc}", transient=True) from exc

    def reversed(self) -> GlobusMover:
        """The same mover in the other direction (stage-out: results come back)."""
        return GlobusMover(
            self.client,
            self.dst_ep,
            self.src_ep,
            poll_s=self.poll_s,
            timeout_s=self.timeout_s,
            sleep=self._sleep,
        )

    def _task(self, task_id: str) -> dict[str, Any] | None:
        """One look at a task: its document when SUCCEEDED, None while under way, else raise."""
        task = self._api("get_task", self.client.get_task, task_id)
        status, nice = task["status"], task.get("nice_status")
        if status == "SUCCEEDED":
            return dict(task.data)
        if status == "FAILED":
            err = task.get("fatal_error") or {}
            raise TransferError(
                f"Globus task {task_id} FAILED: {err.get('code', nice)}: {err.get('description', '')}".rstrip(
                    ": "
                ),
                transient=err.get("code") not in PERMANENT_FAILED,
            )
        if status == "INACTIVE":
            raise TransferError(
                f"Globus task {task_id} is INACTIVE ({nice}): its credentials expired or were revoked; "
                "re-activate the collections' consent, then resubmit"
            )
        if nice in PERMANENT_NICE:
            self._api("cancel_task", self.client.cancel_task, task_id)
            raise TransferError(f"Globus task {task_id} cancelled: {nice} will not pass by retrying")
        return None

    def wait(self, task_id: str) -> dict[str, Any]:
        """Poll ``task_id`` until it SUCCEEDED (returns the task document) or raise."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            task = self._task(task_id)
            if task is not None:
                return task
            if time.monotonic() > deadline:
                raise TransferError(
                    f"Globus task {task_id} still under way after {self.timeout_s} s", transient=True
                )
            self._sleep(self.poll_s)

    def _verified(
        self, task_id: str, task: dict[str, Any], source: str, destination: str, t0: float
    ) -> TransferResult:
        src_size = self.size(source, at="source")
        dst_size = self.size(destination, at="destination")
        if dst_size is None:
            raise TransferError(
                f"Globus task {task_id} SUCCEEDED but {destination} is not at the destination"
            )
        if src_size is not None and src_size != dst_size:
            raise TransferError(
                f"Globus task {task_id} SUCCEEDED but {destination} has {dst_size} bytes, "
                f"the source {src_size}",
                transient=True,
            )
        return TransferResult(
            source,
            destination,
            int(task.get("files", 0)),
            int(task.get("bytes_transferred", 0)),
            time.perf_counter() - t0,
            task_id=task_id,
        )

    def check(self, task_id: str, source: str, destination: str) -> TransferResult | None:
        """None while the task runs; the result once SUCCEEDED *and* verified; else raise."""
        task = self._task(task_id)
        return (
            None if task is None else self._verified(task_id, task, source, destination, time.perf_counter())
        )

    def copy(self, source: str, destination: str, *, recursive: bool = False) -> TransferResult:
        t = time.perf_counter()
        task_id = self.submit(source, destination, recursive=recursive)
        return self._verified(task_id, self.wait(task_id), source, destination, t)

    def size(self, path: str, *, at: str = "destination") -> int | None:
        globus_sdk = _globus()

        try:
            st = self.client.operation_stat(self._endpoint(at), path)
        except globus_sdk.TransferAPIError as exc:
            if exc.http_status == 404:
                return None
            raise TransferError(
                f"Globus stat {path}: {exc.http_status} {exc.code}: {exc.message}",
                transient=exc.http_status >= 500,
            ) from exc
        return int(st["size"]) if st.get("type") == "file" else int(st.get("size") or 0)

    def exists(self, path: str, *, at: str = "destination") -> bool:
        return self.size(path, at=at) is not None

    def delete(self, path: str, *, at: str = "destination") -> None:
        globus_sdk = _globus()

        ep = self._endpoint(at)
        data = globus_sdk.DeleteData(ep, recursive=True, label="bluesky_tomo_hpc prune")
        data.add_item(path)
        task_id = str(self._api("submit_delete", self.client.submit_delete, data)["task_id"])
        self.wait(task_id)
