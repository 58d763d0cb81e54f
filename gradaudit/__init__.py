"""gradaudit: find the line that cuts the gradient in a loss function, before training starts."""

from __future__ import annotations

from typing import Any

from gradaudit._version import __version__  # noqa: F401 - the package's version, as gradaudit.__version__

__all__ = ["AuditedLoss", "Spec", "audit", "case"]


def __getattr__(name: str) -> Any:
    # The API loads on first use, so `import gradaudit` (and `gradaudit --help`) stays light.
    if name in __all__:
        from gradaudit import api

        return getattr(api, name)
    raise AttributeError(f"module 'gradaudit' has no attribute {name!r}")
