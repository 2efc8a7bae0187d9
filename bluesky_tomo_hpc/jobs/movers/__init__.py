"""Movers: put files where a job can read them and bring results back, verified."""

from .mover import Mover, TransferError, TransferResult

__all__ = ["Mover", "TransferError", "TransferResult"]
