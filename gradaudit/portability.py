"""Device portability: which tensors a loss makes or keeps on a fixed device, and which of them
really meet the inputs there.

A warning is for a loss that would fail (or compute on the wrong device) on another device. What
torch allows is no warning: a 0-dim CPU tensor mixes with any device; a CPU index tensor may
index a tensor on any device (`x[idx]`, `x[idx] = v`); a tensor moved with `.to(x.device)`,
`.to(x)` or `type_as(x)` follows the input. A plain tensor attribute of a module is only a
problem where `module.to(device)` leaves it behind and forward then uses it as it is; a library
that moves its own state (torchmetrics' `_apply`) or a tensor rebuilt from the inputs in every
call is fine. The tracer (gradaudit.tracing) feeds these rules; the findings are built here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from gradaudit.model import Finding, Location

# Indexing that accepts CPU index tensors for a tensor on any device (aten::index / index_put_);
# index_select, gather and take do not, so they stay under the ordinary rule.
INDEX_ALLOWS_CPU = frozenset({"__getitem__", "__setitem__", "index_put", "index_put_"})
# Ops whose other tensor argument only lends its dtype, shape or device: not a gradient path.
LIKE_OTHER = frozenset({"type_as", "expand_as", "view_as", "reshape_as"})

CONFIRM_RUN = "to confirm, run this case with --device cuda on a machine with a GPU"


def follows_device(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether a call puts its result on the device of a tensor (`.to(x.device)`, `type_as(x)`)."""
    if name == "type_as":
        return True
    if name != "to":
        return False
    return any(isinstance(a, (torch.device, torch.Tensor)) for a in (*args[1:], kwargs.get("device")))


def gradient_args(name: str, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The arguments of a call that can carry a gradient: not the tensor `type_as(x)` copies from."""
    if name in LIKE_OTHER or (name == "to" and len(args) > 1 and isinstance(args[1], torch.Tensor)):
        return args[:1], {}
    return args, kwargs


def moves_to_fixed_device(op: str, device: str) -> bool:
    """A move that is wrong wherever it meets the inputs or not: `.cuda()`, `.to("cuda")`."""
    if op.endswith(".cuda"):
        return True
    return op.endswith(".to") and device not in ("", "None", "cpu")


def factory_finding(rec: Any, loc: Location | None, code: str) -> Finding | None:
    """The device-portability warning of one tracer `factory` record, or None where it is fine."""
    if not (rec.met or moves_to_fixed_device(rec.op, rec.device)):
        return None
    where = f" at {loc.where}" if loc else ""
    if rec.device in ("", "None"):
        why = "makes a tensor on the default device (no device=) that meets the inputs"
        fix = "pass device=<input>.device (or build it with a *_like factory)"
    else:
        why = f"puts a tensor on the fixed device {rec.device!r}, where it meets the inputs"
        fix = "use .to(<input>.device)"
    return Finding(id="device-portability", severity="warn", location=loc,
                   message=f"{code}{where} {why}: on another device this raises a device mismatch; "
                           f"{fix} ({CONFIRM_RUN})",
                   detail={"op": rec.op, "device": rec.device or None})


# -- plain tensor attributes ------------------------------------------------------------------------
@dataclass
class Attribute:
    """A plain (unregistered) tensor attribute of a module, which `module.to(device)` leaves behind."""

    name: str  # dotted from the root module
    attr: str
    owner: type
    tensor: torch.Tensor


def _moves_itself(module: torch.nn.Module) -> bool:
    cls = type(module)
    return cls._apply is not torch.nn.Module._apply or cls.to is not torch.nn.Module.to


def _moved_by_apply(module: torch.nn.Module, attrs: list[str]) -> set[str]:
    """Which of `attrs` the module's own `_apply` (what `.to()` calls) moves, tried on a copy."""
    try:
        clone = copy.deepcopy(module)
        before = {id(getattr(clone, a)): a for a in attrs}
        seen: set[int] = set()

        def note(t: torch.Tensor) -> torch.Tensor:
            seen.add(id(t))
            return t

        clone._apply(note)
    except Exception:  # noqa: BLE001 - a module that cannot be copied: trust it to move its state
        return set(attrs)
    return {a for i, a in before.items() if i in seen}


def unmoved_attributes(module: torch.nn.Module) -> list[Attribute]:
    """The plain tensor attributes (more than 0-dim) that `module.to(device)` would not move."""
    found = []
    for path, sub in module.named_modules():
        attrs = [a for a, v in vars(sub).items()
                 if isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter) and v.dim() > 0]
        if not attrs:
            continue
        moved = _moved_by_apply(sub, attrs) if _moves_itself(sub) else set()
        for attr in attrs:
            if attr not in moved:
                found.append(Attribute(f"{path}.{attr}" if path else attr, attr, type(sub), vars(sub)[attr]))
    return found


def attribute_finding(name: str, attr: str, device: str, met: bool | None, loc: Location | None,
                      code: str) -> Finding | None:
    """The warning for a plain attribute that forward used with the inputs (`met`); None where it
    did not; an info where the check could not run (`met` None)."""
    if met is False:
        return None
    where = f" at {loc.where}" if loc else ""
    head = f"{code}{where} keeps the tensor `{name}` as a plain attribute"
    fix = f"use self.register_buffer({attr!r}, ...)"
    detail = {"op": "attribute", "attribute": name, "device": device}
    if met is None:
        return Finding(id="device-portability", severity="info", location=loc, detail=detail,
                       message=f"{head}, which module.to(device) does not move; gradaudit could not check "
                               f"whether forward uses it with the inputs; if it does, {fix}")
    return Finding(id="device-portability", severity="warn", location=loc, detail=detail,
                   message=f"{head}, and forward uses it with the inputs as it is: module.to(device) does not "
                           "move it, so once the loss is moved to another device it meets the inputs on the "
                           f"old one; {fix} (to confirm: call the loss, move it with .to(<another device>), "
                           "call it again on inputs there)")
