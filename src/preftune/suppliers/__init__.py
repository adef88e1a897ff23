"""Registered suppliers of the statistics objectives need beyond summed log-probs (see :mod:`.base`)."""
from .base import MicroBatch, Supplier, register_supplier, supplied, suppliers_for

__all__ = ["MicroBatch", "Supplier", "register_supplier", "supplied", "suppliers_for"]
