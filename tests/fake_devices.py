"""A fake CUDA for CPU machines: the audit's device layer, with failures a test can queue.

"cuda" runs on the CPU (or, with `meta=True`, on the meta device, whose tensors really do clash
with CPU-made ones). Losses in tests/losses/device_faults.py read `current().active` to act like
a kernel that differs on CUDA, and push errors onto `pending`, which the next `synchronize` raises,
the way CUDA reports an asynchronous error at the next synchronizing call.
"""

from __future__ import annotations

import contextlib

import torch

from gradaudit.devices import DeviceLayer


class FakeCuda(DeviceLayer):
    def __init__(self, *, meta: bool = False) -> None:
        super().__init__()
        self.meta = meta
        self.pending: list[BaseException] = []
        self.active: str | None = None  # the device name whose forward runs now
        self.synchronized = 0
        self.freed = 0

    def skip_reason(self, device: str) -> str | None:
        return None if device.partition(":")[0] in ("cpu", "cuda") else super().skip_reason(device)

    def torch_device(self, device: str) -> torch.device:
        if device == "cpu":
            return torch.device("cpu")
        return torch.device("meta" if self.meta else "cpu")

    def synchronize(self, device: torch.device) -> None:
        self.synchronized += 1
        if self.pending:
            raise self.pending.pop(0)

    def free_memory(self, device: torch.device) -> None:
        self.freed += 1

    def memory_note(self, device: torch.device) -> str:
        return "70.0 GiB allocated and 72.0 GiB reserved by torch, 1.2 GiB free of 79.1 GiB"

    @contextlib.contextmanager
    def forward_context(self, device: str, autocast: str | None):
        self.active = device
        try:
            with super().forward_context(device, autocast):
                yield
        finally:
            self.active = None


def device_assert() -> RuntimeError:
    """The error CUDA raises after a device-side assert (torch >= 2.8 raises AcceleratorError)."""
    kind = getattr(torch, "AcceleratorError", RuntimeError)
    return kind("CUDA error: device-side assert triggered\nCUDA kernel errors might be asynchronously "
                "reported at some other API call, so the stacktrace below might be incorrect.")


def cuda_oom() -> BaseException:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total "
                                  "capacity of 79.10 GiB of which 1.20 GiB is free.")
