"""The Python side of the native core: the one import of the Rust module, and the argument checks.

`chatgw_native` (built from this folder's Rust crate by maturin) is optional at run time:
each structure (dedup/window.py, routing/load_index.py, gateway/timing_wheel.py) falls back
to its plain-Python reference, which behaves identically (docs/native.md). They all ask
here, so the import and its fallback are written once.
"""

from __future__ import annotations

from types import ModuleType

try:
    import chatgw_native as _module
except ImportError:  # not built: the references serve
    _module = None

MODULE: ModuleType | None = _module
AVAILABLE: bool = _module is not None

__all__ = ["AVAILABLE", "MODULE"]
