"""Losses that break the process auditing them, each beside a loss that is fine."""

import ctypes
import os
import signal
import time

import torch


def segfault(x):
    ctypes.string_at(0)  # reads address 0: SIGSEGV
    return x.sum()


def aborts(x):
    os.abort()  # SIGABRT, as a failed C assertion does
    return x.sum()


def exits(x):
    os._exit(3)  # leaves without a word, skipping every handler
    return x.sum()


def spins(x):
    while True:
        time.sleep(0.001)
    return x.sum()


def spins_in_python(x):
    n = 0
    while True:  # a pure-Python loop that never releases its thread
        n += 1
    return x.sum()


def hogs_memory(x):
    # 8 GiB, touched: far past any max_memory_mb a test sets, and past what a CI runner has free.
    big = torch.ones(2 * 1024**3, dtype=torch.float32, device=x.device)
    return (x * big[0]).sum()


def calls_sys_exit(x):
    raise SystemExit(4)


def raises(x):
    raise ValueError("this loss is broken")


def good(x):
    return (x ** 2).mean()


def slow_good(x):
    time.sleep(0.3)
    return (x ** 2).mean()


def allocates_64mb(x):
    buffer = torch.ones(16 * 1024**2, dtype=torch.float32, device=x.device)  # 64 MiB, well under the tests' limits
    return (x * buffer[0]).sum()


def poisons_device(x):
    # What the audit does after a device-side assert: mark this process's device context unusable.
    from gradaudit.devices import current

    current().mark_poisoned(x.device.type, "a test loss poisoned the context")
    return (x ** 2).mean()


def killed(x):
    os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's out-of-memory killer does
    return x.sum()


def needs_passive_openmp(x):
    if os.environ.get("OMP_WAIT_POLICY") != "PASSIVE":
        raise RuntimeError(f"OMP_WAIT_POLICY is {os.environ.get('OMP_WAIT_POLICY')!r} in the worker")
    return (x ** 2).mean()


def threads_as_value(x):
    # The loss's value is the worker's intra-op thread count, so a test can read it from the results.
    return (x - x.detach()).sum() + torch.get_num_threads()
