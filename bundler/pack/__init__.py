"""The online side: project file, lock, wheels, site-packages tree, pack-time checks, and the
pipeline that assembles them into a signed bundle (``pack``)."""

from __future__ import annotations

from .pipeline import RUNTIME_LOCK, RUNTIME_SOURCE, pack, runtime_sources, source_date_epoch

__all__ = ["RUNTIME_LOCK", "RUNTIME_SOURCE", "pack", "runtime_sources", "source_date_epoch"]
