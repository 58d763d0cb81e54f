"""Which devices exist here, and why one that does not is skipped rather than an error."""

from __future__ import annotations

import torch


def skip_reason(device: str) -> str | None:
    """Return why `device` cannot be audited here, or None when it can."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return None
    if kind == "cuda":
        if not torch.cuda.is_available():
            return "cuda is not available here (torch.cuda.is_available() is false)"
        if index and int(index) >= torch.cuda.device_count():
            return f"{device} does not exist: this machine has {torch.cuda.device_count()} cuda device(s)"
        return None
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return "mps is not available here (torch.backends.mps.is_available() is false)"
        return None
    return f"unknown device {device!r}"


def device_names() -> dict[str, str]:
    """Human names of the accelerators torch sees, for the report header."""
    names = {"cpu": "cpu"}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            names[f"cuda:{i}"] = torch.cuda.get_device_name(i)
    return names
