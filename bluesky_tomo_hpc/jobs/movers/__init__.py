"""Movers: put files where a job can read them and bring results back, verified."""

from .base import Mover, TransferError, TransferResult

__all__ = ["Mover", "TransferError", "TransferResult"]
