"""The facts about this machine that a results file records."""

from __future__ import annotations

import platform
import sys
from typing import Any


def describe() -> dict[str, Any]:
    """Python, torch, platform and CUDA facts (cuda is None where there is no GPU)."""
    import torch

    from gradaudit.devices import device_names

    cuda = None
    if torch.cuda.is_available():
        cuda = {"version": torch.version.cuda, "devices": list(device_names().values())[1:]}
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion would need torch to unpickle
        "platform": platform.platform(),
        "cuda": cuda,
        "executable": sys.executable,
    }
