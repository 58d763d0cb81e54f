"""The devices gradaudit audits on: which exist, how to use one, and how its failures read.

The audit reaches devices only through a `DeviceLayer` (`current()` returns the one in use), so
CUDA-only behaviour (out of memory, a device-side assert that poisons the context, errors that
surface only at `synchronize`) is unit-tested on a CPU machine with a fake layer installed by
`installed(layer)`.

A device-side assert (or an illegal memory access) leaves the CUDA context of the process unusable:
every later CUDA call fails. The audit reports the case that caused it and marks the layer
`poisoned`; a worker process must then be replaced (`needs_fresh_process()`), and the in-process
runner reports later cases on that device as errors instead of blaming them.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import torch

# How the failure of a device operation is handled (see `classify`).
OOM = "out-of-memory"
CONTEXT = "context-poisoned"  # sticky: the process can no longer use the device
MIXED = "mixed-devices"

# Messages of CUDA errors after which the context is unusable ("sticky" errors).
_STICKY = ("device-side assert triggered", "an illegal memory access was encountered",
           "unspecified launch failure", "misaligned address", "illegal instruction",
           "CUDA error: an illegal", "CUBLAS_STATUS_EXECUTION_FAILED")
_MIXED = ("Expected all tensors to be on the same device", "is not on the expected device",
          "Expected tensor for argument", "found at least two devices")

_NO_CONTEXT = contextlib.nullcontext()  # stateless: one serves every forward

# The autocast dtype gradaudit uses on each device type (torch's own defaults).
AUTOCAST_DTYPE = {"cuda": "float16", "cpu": "bfloat16", "mps": "float16"}


def classify(exc: BaseException) -> str | None:
    """Say which device failure `exc` is (OOM, CONTEXT, MIXED), or None for an ordinary error."""
    message = str(exc)
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in message.lower():
        return OOM
    if any(s in message for s in _STICKY):
        return CONTEXT
    if any(s in message for s in _MIXED):
        return MIXED
    return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class DeviceLayer:
    """Everything the audit does with a device; the real one talks to torch."""

    def __init__(self) -> None:
        # device name -> why this process can no longer use it
        self.poisoned: dict[str, str] = {}

    def skip_reason(self, device: str) -> str | None:
        """Return why `device` cannot be audited here, or None when it can."""
        return skip_reason(device)

    def torch_device(self, device: str) -> torch.device:
        """The torch device that audits of `device` run on."""
        return torch.device(device)

    def synchronize(self, device: torch.device) -> None:
        """Wait for the device's queued work, so an asynchronous error surfaces here."""
        kind = _kind(device)
        if kind == "cuda":
            torch.cuda.synchronize(device)
        elif kind == "mps":  # pragma: no cover - no mps here
            torch.mps.synchronize()

    def free_memory(self, device: torch.device) -> None:
        """Give back what a failed case left allocated, so the next case starts clean."""
        gc.collect()
        if device.type == "cuda":
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
        elif device.type == "mps":  # pragma: no cover
            with contextlib.suppress(Exception):
                torch.mps.empty_cache()

    def memory_note(self, device: torch.device) -> str:
        """How much device memory is in use, for an out-of-memory message ("" where unknown)."""
        if device.type != "cuda":
            return ""
        try:
            free, total = torch.cuda.mem_get_info(device)
            allocated = torch.cuda.memory_allocated(device)
            reserved = torch.cuda.memory_reserved(device)
        except Exception:  # noqa: BLE001 - a broken context cannot tell us
            return ""
        return (f"{format_bytes(allocated)} allocated and {format_bytes(reserved)} reserved by torch, "
                f"{format_bytes(free)} free of {format_bytes(total)}")

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The default random generator of a non-CPU `device`, which a draw seeds and restores;
        None for the CPU (seeded on its own) and where the device has none we know of."""
        if _kind(device) == "cpu":
            return None
        if device.type == "cuda":
            torch.cuda.init()
            return torch.cuda.default_generators[device.index if device.index is not None
                                                 else torch.cuda.current_device()]
        if device.type == "xpu":  # pragma: no cover - no xpu here
            torch.xpu.init()
            return torch.xpu.default_generators[device.index if device.index is not None
                                                else torch.xpu.current_device()]
        if device.type == "mps":  # pragma: no cover - no mps here
            return torch.mps._get_default_mps_generator()
        return None

    def forward_context(self, device: str, autocast: str | None) -> Any:
        """The context the loss's forward runs in on `device`: autocast to `autocast` (a dtype
        name), or none."""
        if not autocast:
            return _NO_CONTEXT
        return torch.autocast(self.torch_device(device).type, dtype=getattr(torch, autocast))

    def mark_poisoned(self, device: str, reason: str) -> None:
        self.poisoned.setdefault(device.partition(":")[0], reason)

    def poisoned_reason(self, device: str) -> str | None:
        """Why this process can no longer use `device`, or None when it still can."""
        return self.poisoned.get(device.partition(":")[0])


_KINDS: dict[torch.device, str] = {}


def _kind(device: torch.device) -> str:
    """`device.type`, which torch builds anew as a string at each read (0.8 us, several times a
    draw), read once a device."""
    kind = _KINDS.get(device)
    if kind is None:
        kind = _KINDS[device] = device.type
    return kind


_LAYER: DeviceLayer | None = None


def current() -> DeviceLayer:
    """The device layer of this process."""
    global _LAYER
    if _LAYER is None:
        _LAYER = DeviceLayer()
    return _LAYER


@contextlib.contextmanager
def installed(layer: DeviceLayer) -> Iterator[DeviceLayer]:
    """Use `layer` as this process's device layer inside the block (tests install fakes)."""
    global _LAYER
    before = _LAYER
    _LAYER = layer
    try:
        yield layer
    finally:
        _LAYER = before


def needs_fresh_process() -> bool:
    """Whether a case poisoned a device context: a worker must then exit and be replaced."""
    return bool(_LAYER is not None and _LAYER.poisoned)


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
            try:
                names[f"cuda:{i}"] = torch.cuda.get_device_name(i)
            except Exception:  # noqa: BLE001 - a context a case poisoned must not lose the run
                names[f"cuda:{i}"] = "cuda (name unavailable)"
    return names
