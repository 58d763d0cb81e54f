"""Process-wide state a loss can leave changed: take it before a case, compare after, restore in-process.

A worker is reused for the next case, and an in-process run (`gradaudit.audit()`, the pytest
plugin, `--no-isolate`) shares everything with its caller, so a loss that leaves grad mode off,
patches `torch.Tensor.detach` or swaps a `sys.modules` entry would change the verdicts of the
cases after it. `Snapshot.take()` records the switches and the identity of every attribute of the
namespaces that verdicts rest on (references, so nothing is copied and no id is reused);
`changes()` lists what differs now, and `restore()` puts back what can be put back.

What does not count: importing a module (new `sys.modules` keys and new module attributes), the
first use of a lazily imported torch submodule, and anything outside the watched namespaces.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class Change:
    """One thing a case left different, in words a user recognises."""

    text: str  # "left grad mode off", "replaced torch.Tensor.detach"
    code: Any = None  # the function now in place of an attribute, to point at its line
    restorable: bool = True
    undo: Any = None  # puts an attribute, module or variable back (switches are reset together)


def _watched() -> list[tuple[str, Any]]:
    """(display name, namespace) of what verdicts rest on: patching any of these changes them."""
    import torch
    import torch.autograd
    import torch.nn.functional

    return [("torch", torch), ("torch.Tensor", torch.Tensor), ("torch.nn.functional", torch.nn.functional),
            ("torch.nn.Module", torch.nn.Module), ("torch.autograd", torch.autograd)]


def _switches() -> dict[str, Any]:
    """The process-wide switches of torch (and of the process) that a loss may leave set."""
    import torch

    def safely(get, default=None):
        try:
            return get()
        except Exception:  # noqa: BLE001 - a switch this torch does not have
            return default

    return {
        "grad": torch.is_grad_enabled(),
        "inference": torch.is_inference_mode_enabled(),
        "anomaly": (torch.is_anomaly_enabled(), safely(torch.is_anomaly_check_nan_enabled, True)),
        "dtype": torch.get_default_dtype(),
        "device": safely(torch.get_default_device),
        "deterministic": (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled()),
        "autocast": {d: safely(lambda d=d: torch.is_autocast_enabled(d), False) for d in ("cpu", "cuda")},
        "matmul": safely(torch.get_float32_matmul_precision),
        "function_modes": safely(torch._C._len_torch_function_stack, 0),
        "dispatch_modes": safely(torch._C._len_torch_dispatch_stack, 0),
        "saved_hooks": safely(lambda: torch._C._autograd._top_saved_tensors_default_hooks(False) is not None,
                              False),
        "cwd": safely(os.getcwd),
        "stdout": (sys.stdout, bool(getattr(sys.stdout, "closed", False))),
        "stderr": (sys.stderr, bool(getattr(sys.stderr, "closed", False))),
    }


@dataclass
class Snapshot:
    """The state of this process at one moment, to compare with and restore to."""

    switches: dict[str, Any]
    attributes: list[tuple[str, Any, _Namespace]]  # (name, namespace, its __dict__ then)
    modules: _Namespace
    environ: dict[str, str]
    _raw_environ: dict | None = None  # os.environ's own (encoded) mapping then, for a check in C

    @classmethod
    def take(cls) -> Snapshot:
        """Record the current state (cheap: references, no copies of values)."""
        return cls(switches=_switches(),
                   attributes=[(name, ns, _Namespace(vars(ns))) for name, ns in _watched()],
                   modules=_Namespace(sys.modules), environ=dict(os.environ), _raw_environ=_raw_environ())

    # -- what changed -------------------------------------------------------------------------
    def changes(self) -> list[Change]:
        """What differs from this snapshot now, each said once."""
        found = self._switch_changes(_switches())
        for name, ns, before in self.attributes:
            found += _attribute_changes(name, ns, before)
        if self.modules.unchanged(sys.modules):
            return found + self._environ_changes()
        for key, module in self.modules.items.items():
            now = sys.modules.get(key, _MISSING)
            if now is not module:
                found.append(Change(f"{'removed' if now is _MISSING else 'replaced'} sys.modules[{key!r}]",
                                    undo=lambda key=key, module=module: sys.modules.__setitem__(key, module)))
        return found + self._environ_changes()

    def _environ_changes(self) -> list[Change]:
        found = []
        raw = _raw_environ()
        if raw is not None and raw == self._raw_environ:  # the common case, with no decoding
            return found
        environ = dict(os.environ)
        if environ == self.environ:
            return found
        for key in sorted(set(self.environ) | set(environ)):
            if self.environ.get(key) != environ.get(key) and not key.lstrip("_").startswith(_TORCH_VARIABLES):
                verb = "set" if key not in self.environ else ("unset" if key not in environ else "changed")
                found.append(Change(f"{verb} the environment variable {key}",
                                    undo=lambda key=key, value=self.environ.get(key): _set_variable(key, value)))
        return found

    def _switch_changes(self, now: dict[str, Any]) -> list[Change]:
        was = self.switches
        found = []

        def differs(key: str) -> bool:
            return now.get(key) != was.get(key)

        if differs("inference"):
            found.append(Change(f"left inference mode {'on' if now['inference'] else 'off'}",
                                restorable=not now["inference"]))
        if differs("grad") and not now["inference"]:
            found.append(Change(f"left grad mode {'on' if now['grad'] else 'off'}"
                                + (" (torch.set_grad_enabled(False) without restoring it)" if not now["grad"]
                                   else "")))
        if differs("anomaly"):
            found.append(Change(f"left anomaly detection {'on' if now['anomaly'][0] else 'off'}"))
        if differs("dtype"):
            found.append(Change(f"left the default dtype at {_name(now['dtype'])} (was {_name(was['dtype'])})"))
        if differs("device"):
            found.append(Change(f"left the default device at {now['device']} (was {was['device']})"))
        if differs("deterministic"):
            found.append(Change("changed torch.use_deterministic_algorithms"))
        for device, on in now["autocast"].items():
            if on != was["autocast"].get(device):
                found.append(Change(f"left autocast {'on' if on else 'off'} for {device}"))
        if differs("matmul"):
            found.append(Change(f"left the float32 matmul precision at {now['matmul']!r} (was {was['matmul']!r})"))
        extra = (now["function_modes"] or 0) - (was["function_modes"] or 0)
        if extra and not (differs("device") and abs(extra) == 1):  # a default device is such a mode
            found.append(Change(f"left {abs(extra)} torch function mode(s) {'active' if extra > 0 else 'exited'}",
                                restorable=extra > 0))
        extra = (now["dispatch_modes"] or 0) - (was["dispatch_modes"] or 0)
        if extra:
            found.append(Change(f"left {abs(extra)} torch dispatch mode(s) {'active' if extra > 0 else 'exited'}",
                                restorable=extra > 0))
        if differs("saved_hooks"):
            found.append(Change("left saved-tensor hooks (torch.autograd.graph.saved_tensors_hooks) installed",
                                restorable=False))
        if differs("cwd"):
            found.append(Change(f"changed the working folder to {now['cwd']} (was {was['cwd']})"))
        for stream in ("stdout", "stderr"):
            obj, closed = now[stream]
            if obj is not was[stream][0]:
                found.append(Change(f"replaced sys.{stream}"))
            elif closed and not was[stream][1]:
                found.append(Change(f"closed sys.{stream}"))
        return found

    # -- putting it back ----------------------------------------------------------------------
    def restore(self) -> list[Change]:
        """Put back what a case changed where this process can; return what is still different."""
        import torch

        was = self.switches
        now = _switches()
        steps = []
        if now["device"] != was["device"] or (now["function_modes"] or 0) > (was["function_modes"] or 0):
            steps.append(lambda: torch.set_default_device(None if str(was["device"]) == "cpu" else was["device"]))
        steps += [
            lambda: torch._C._set_grad_enabled(was["grad"]),
            lambda: torch.set_anomaly_enabled(*was["anomaly"]),
            lambda: torch.set_default_dtype(was["dtype"]),
            lambda: torch.use_deterministic_algorithms(was["deterministic"][0],
                                                       warn_only=was["deterministic"][1]),
            lambda: was["matmul"] and torch.set_float32_matmul_precision(was["matmul"]),
            lambda: _pop_modes(torch._C._len_torch_function_stack, torch._C._pop_torch_function_stack,
                               was["function_modes"]),
            lambda: _pop_modes(torch._C._len_torch_dispatch_stack, torch._C._pop_torch_dispatch_stack,
                               was["dispatch_modes"]),
            lambda: was["cwd"] and os.getcwd() != was["cwd"] and os.chdir(was["cwd"]),
        ]
        for device, on in was["autocast"].items():
            steps.append(lambda device=device, on=on: torch.is_autocast_enabled(device) != on
                         and torch.set_autocast_enabled(device, on))
        for step in steps:
            try:
                step()
            except Exception:  # noqa: BLE001 - what cannot be put back is reported below
                pass
        for stream in ("stdout", "stderr"):
            obj, closed_before = was[stream]
            if getattr(sys, stream) is not obj:
                setattr(sys, stream, obj)
            if getattr(obj, "closed", False) and not closed_before:
                try:
                    _reopen(stream)
                except (OSError, ValueError):
                    continue
                self.switches[stream] = (getattr(sys, stream), False)  # the stream cases start from now
        for change in self.changes():
            if change.undo is not None:
                try:
                    change.undo()
                except Exception:  # noqa: BLE001 - still different: reported below
                    pass
        return self.changes()


_MISSING = object()


def _raw_environ() -> dict | None:
    """A copy of the mapping behind os.environ (bytes on POSIX), made without decoding each entry;
    None where it has none."""
    data = getattr(os.environ, "_data", None)
    return dict(data) if isinstance(data, dict) else None


class _Namespace:
    """A dict's keys and values as they were. The check runs after every job: where CPython's
    per-dict version tag is readable (`_dict_version`), a dict whose version is the one of its last
    clean check is unchanged, which costs a read instead of a pass over 1,500 entries (whose
    reference counts a pass touches, each a cache miss after an audit: half a millisecond a job).
    Otherwise one subset test of item views in C: identity decides each entry before any `==`,
    and added entries (imports) do not count."""

    def __init__(self, data: Any) -> None:
        self.items = dict(data)  # the values are kept alive: no id is reused meanwhile
        self._view = self.items.items()
        self._clean = _backing(data)  # the dict at its last clean check, and its version then
        self._version = _dict_version(self._clean)

    def unchanged(self, now: Any) -> bool:
        """Whether every entry is still there with the same object (entries may have been added)."""
        backing = _backing(now)
        version = _dict_version(backing)
        if version is not None and backing is self._clean and version == self._version:
            return True  # not written to since a check that found every entry in place
        try:
            same = self._view <= now.items()
        except Exception:  # noqa: BLE001 - a replaced value whose == raises (a tensor): changed
            return False
        if same:  # only additions (or nothing): later checks start from this version
            self._clean, self._version = backing, version
        return same

    def added(self, now: Any) -> list[str]:
        if len(now) == len(self.items):  # unchanged and as many entries: nothing added
            return []
        return [key for key in now if key not in self.items]


def _backing(data: Any) -> Any:
    """The dict behind a namespace: itself, or a class's behind its read-only mappingproxy."""
    if type(data) is dict:
        return data
    import gc

    return next((d for d in gc.get_referents(data) if type(d) is dict), None)


def _dict_version(data: Any) -> int | None:
    """CPython's version tag of a dict (PEP 509: it changes on every write), or None where there
    is none that behaves as one (see `_version_reader`)."""
    global _read_version
    if _read_version is _UNTESTED:
        _read_version = _version_reader()
    if _read_version is None or type(data) is not dict:
        return None
    return _read_version(data)


def _version_reader() -> Any:
    """A reader of the field after PyDictObject's header and size, kept only where it behaves as a
    version tag here: it changes when a probe dict gains, replaces and loses an entry (a size or
    pointer field would miss the replacement) and is the same for another dict's write. Elsewhere
    (PyPy, a build whose layout differs, a Python without the tag) the checks fall back to the
    full comparison."""
    if sys.implementation.name != "cpython":
        return None
    try:
        import ctypes

        offset = 2 * ctypes.sizeof(ctypes.c_void_p) + ctypes.sizeof(ctypes.c_ssize_t)

        def read(d: dict) -> int:
            return ctypes.c_uint64.from_address(id(d) + offset).value

        probe: dict = {"a": 1}
        seen = [read(probe)]
        for write in (lambda: probe.__setitem__("b", 2), lambda: probe.__setitem__("a", object()),
                      lambda: probe.__delitem__("b")):
            write()
            seen.append(read(probe))
        other: dict = {}
        before = read(probe)
        other["x"] = 1
        if len(set(seen)) == len(seen) and read(probe) == before:
            return read
    except Exception:  # noqa: BLE001 - no reader: the full comparison
        pass
    return None


_UNTESTED = object()
_read_version: Any = _UNTESTED


def _name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _attribute_changes(name: str, ns: Any, snapshot: _Namespace) -> list[Change]:
    now = vars(ns)
    found = []
    if snapshot.unchanged(now):
        # Only a class's new attributes can matter (below); a module's never do.
        added = snapshot.added(now) if isinstance(ns, type) else []
    else:
        before = snapshot.items
        for key, value in before.items():
            current = now.get(key, _MISSING)
            if current is not value and not _made_by_torch(current):
                found.append(Change(f"{'deleted' if current is _MISSING else 'replaced'} {name}.{key}",
                                    code=None if current is _MISSING else current,
                                    undo=lambda key=key, value=value: setattr(ns, key, value)))
        added = [key for key in now if key not in before]
    # A new attribute of a class matters where it hides an inherited one (`torch.Tensor.detach`
    # lives in its C base); a new attribute of a module (a submodule, a helper) changes nothing.
    for key in added:
        value = now[key]
        if isinstance(ns, type) and _inherited(ns, key) and not _made_by_torch(value):
            found.append(Change(f"replaced {name}.{key}", code=value,
                                undo=lambda key=key: delattr(ns, key)))
    return found


def _inherited(ns: Any, key: str) -> bool:
    return isinstance(ns, type) and any(key in vars(base) for base in ns.__mro__[1:])


def _made_by_torch(value: Any) -> bool:
    """Whether a new attribute value is torch's own code: torch patches itself on first use (the
    first torch.compile wraps torch.manual_seed and nn.Module.__init__), which is no case's doing."""
    code = getattr(getattr(value, "__func__", value), "__code__", None)
    return code is not None and code.co_filename.startswith(_torch_folder())


def _torch_folder() -> str:
    import torch

    return os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


# Variables torch and its compilers set for themselves (TORCHINDUCTOR_CACHE_DIR, ...).
_TORCH_VARIABLES = ("TORCH", "PYTORCH", "TRITON", "CUDA", "CUBLAS", "KMP_", "OMP_", "MKL", "NCCL")


def _set_variable(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _reopen(stream: str) -> None:
    """A fresh sys.stdout/sys.stderr on the same descriptor, where closing the stream left it open
    (Python's own streams do not close their descriptor)."""
    fd = 1 if stream == "stdout" else 2
    old = getattr(sys, stream)
    setattr(sys, stream, open(os.dup(fd), "w", encoding=getattr(old, "encoding", None) or "utf-8",  # noqa: SIM115
                              errors=getattr(old, "errors", None) or "backslashreplace", buffering=1))


def _pop_modes(length, pop, wanted: int) -> None:
    while length() > (wanted or 0):
        pop()


def code_of(changes: list[Change]) -> tuple[str, int, str] | None:
    """(file, line, function) of the first replacement defined in Python, to point the user at it."""
    for change in changes:
        code = getattr(getattr(change.code, "__func__", change.code), "__code__", None)
        if code is not None:
            return code.co_filename, code.co_firstlineno, code.co_name
    return None


def note_leaks(result: Any, changes: list[Change], spec: Any, root: Any, *, in_process: bool,
               unrestored: list[Change] | None = None) -> None:
    """Add the `leaked-state` warning to the result of the case that left `changes` behind.

    In a worker the next case gets a fresh worker; in-process, `unrestored` is what could not be
    put back, which the message names so the user knows later cases may be affected.
    """
    from gradaudit.findings import default_severity
    from gradaudit.frames import location_from
    from gradaudit.model import Finding, status_of

    if not changes or "leaked-state" in spec.expect.ignore:
        return
    shown = "; ".join(c.text for c in changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
    message = (f"the loss left the process changed for whatever runs after it: {shown}. In training the "
               "next step would inherit it")
    if not in_process:
        message += "; gradaudit audited the next case in a fresh worker"
    elif unrestored:
        message += ("; gradaudit could not undo: " + "; ".join(c.text for c in unrestored[:6])
                    + " (later cases in this process may be affected: run them isolated)")
    else:
        message += "; gradaudit restored it in this process"
    where = code_of(changes)
    location = location_from([where], root) if where else None
    finding = Finding(id="leaked-state", severity=default_severity("leaked-state"), message=message,
                      location=location,
                      detail={"changes": [c.text for c in changes],
                              **({"unrestored": [c.text for c in unrestored]} if unrestored else {})})
    result.findings.append(finding)
    if result.status in ("pass", "warn"):
        was = result.status
        result.status = status_of(result.findings)
        if was == "pass" and result.status == "warn":
            result.summary_line = message if location is None else f"{message} at {location.where}" + (
                f": {location.code}" if location.code else "")
