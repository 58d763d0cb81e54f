"""gradaudit: find the line that cuts the gradient in a loss function, before training starts."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["AuditedLoss", "Spec", "audit", "case"]


def __getattr__(name: str) -> Any:
    # The API loads on first use, so `import gradaudit` (and `gradaudit --help`) stays light.
    if name in __all__:
        from gradaudit import api

        return getattr(api, name)
    raise AttributeError(f"module 'gradaudit' has no attribute {name!r}")
