"""Losses that leave the process changed for the cases after them, each beside an innocent one.

Each hostile loss computes a correct loss first and then changes process-wide state on its way
out, so its own verdict is clean and only what it leaves behind can hurt a later case.
"""

import os
import sys
import types

import torch
import torch.nn.functional as F


def good(x):
    return (x ** 2).mean()


def detached(x):
    # A real bug: the graph is cut, so x gets no gradient (loss-no-grad).
    return (x.detach() ** 2).mean()


def mse(x):
    return F.mse_loss(x, torch.zeros_like(x))


def leaves_grad_off(x):
    out = (x ** 2).mean()
    torch.set_grad_enabled(False)
    return out


def patches_detach(x):
    out = (x ** 2).mean()
    torch.Tensor.detach = lambda self: self  # every later .detach() keeps the graph
    return out


def patches_mse_loss(x):
    out = (x ** 2).mean()
    F.mse_loss = lambda a, b, *args, **kwargs: (a * 0).sum()
    return out


def patches_backward(x):
    out = (x ** 2).mean()
    torch.Tensor.backward = lambda self, *args, **kwargs: None
    return out


def swaps_a_module(x):
    out = (x ** 2).mean()
    sys.modules["torch.nn.functional"] = types.ModuleType("torch.nn.functional")
    return out


def leaves_default_dtype(x):
    out = (x ** 2).mean()
    torch.set_default_dtype(torch.float64)
    return out


def leaves_anomaly_mode(x):
    out = (x ** 2).mean()
    torch.autograd.set_detect_anomaly(True)
    return out


def leaves_inference_mode(x):
    out = (x ** 2).mean()
    guard = torch.inference_mode()
    guard.__enter__()
    _GUARDS.append(guard)  # keep it alive: the mode lasts as long as it does
    return out


_GUARDS = []


def needs_grad_mode(x):
    # Innocent, but its verdict rests on grad mode: with it off, the loss has no grad_fn.
    return (x * 3).sum()


def changes_directory(x):
    out = (x ** 2).mean()
    os.chdir(os.environ.get("GRADAUDIT_TEST_ELSEWHERE", "/"))
    return out


def imports_something(x):
    # Importing a module adds to sys.modules and may set attributes: that is not a leak.
    import json  # noqa: F401

    import torch.distributions  # noqa: F401

    return (x ** 2).mean()


def closes_stdout(x):
    out = (x ** 2).mean()
    sys.stdout.close()
    return out


def forks_a_sleeper(x):
    # A child that outlives the case and inherits every descriptor of its worker.
    if os.fork() == 0:
        import time

        time.sleep(90)
        os._exit(0)
    return (x ** 2).mean()


def prints_escapes(x):
    raise ValueError("bad\x1b[2K\rPASS    fake [cpu]\x00\x07 done")


class _Number(int):
    pass


def returns_int_subclass(x):
    return _Number(10 ** 400)  # float() of it overflows


def returns_numpy_vector(x):
    import numpy

    return numpy.array([1.0, 2.0])


def uses_import_module(x):
    import importlib

    functional = importlib.import_module("torch.nn.functional")
    return functional.mse_loss(x, torch.zeros_like(x))


def makes_a_tensor(x):
    weight = torch.ones(x.shape)  # takes the default dtype
    return (x * weight).sum()


def breaks_worker_start(x):
    # Deletes the folder where gradaudit's workers keep their logs, then dies: no new worker starts.
    import glob
    import shutil
    import tempfile

    for folder in glob.glob(os.path.join(tempfile.gettempdir(), "gradaudit-workers-*")):
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(3)
