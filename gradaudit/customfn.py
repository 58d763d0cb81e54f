"""Custom autograd.Functions whose backward returns None for an input that needs a gradient.

Inside a Function's forward, gradients are off by design, so nothing there is a break; what cuts
the gradient is its backward returning None for an input (entmax's loss Functions pad their
return with None for `alpha`). A witness re-runs one draw, hooks every custom Function node of the
loss's graph and records which of its inputs got None from backward; the explanation names that
backward's `return` line.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class NoneGrad:
    """One custom Function whose backward returned None for inputs that lead to audited leaves."""

    function: str  # the Function's class name
    frames: list[tuple[str, int, str]]  # where its backward returns (one frame)
    leaves: set[str] = field(default_factory=set)  # the audited tensors behind those inputs
    inputs: list[str] = field(default_factory=list)  # forward's parameter names, where known


def _leaves_under(node: Any, names: dict[int, str], limit: int = 5000) -> set[str]:
    seen, stack, found = set(), [node], set()
    while stack and len(seen) < limit:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        var = getattr(n, "variable", None)
        if var is not None and id(var) in names:
            found.add(names[id(var)])
        stack.extend(m for m, _ in n.next_functions)
    return found


def _return_line(cls: type, position: int | None) -> tuple[str, int, str] | None:
    """The line of `cls.backward`'s return statement: the one with None at `position` where it can
    tell, else the last one."""
    fn = inspect.unwrap(getattr(cls, "backward", None))
    fn = getattr(fn, "__func__", fn)
    try:
        lines, start = inspect.getsourcelines(fn)
        filename = inspect.getsourcefile(fn)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):
        return None
    returns = [n for n in ast.walk(tree) if isinstance(n, ast.Return) and n.value is not None]
    if not returns or not filename:
        return None
    best = returns[-1]
    for node in returns:
        items = node.value.elts if isinstance(node.value, ast.Tuple) else None
        if items and position is not None and position < len(items):
            item = items[position]
            if isinstance(item, ast.Constant) and item.value is None:
                best = node
                break
    return filename, start + best.lineno - 1, getattr(fn, "__name__", "backward")


def _forward_names(cls: type) -> list[str]:
    try:
        params = list(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        return []
    return params[1:]  # after ctx


def hook_functions(loss: torch.Tensor, hits: list[tuple[Any, int]]) -> list[Any]:
    """Hook every custom Function node of `loss`'s graph: each (node, input index) whose backward
    returns None for an input that requires grad is appended to `hits`. Returns the handles."""
    handles = []
    seen: set[int] = set()
    stack = [loss.grad_fn]
    while stack and len(seen) < 20000:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(n for n, _ in node.next_functions)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            def hook(grad_inputs, grad_outputs, node=node):
                for i, g in enumerate(grad_inputs):
                    if g is None and i < len(node.next_functions) and node.next_functions[i][0] is not None:
                        hits.append((node, i))
            handles.append(node.register_hook(hook))
    return handles


def summarise(hits: list[tuple[Any, int]], names: dict[int, str]) -> list[NoneGrad]:
    """The Functions behind `hits`, with the audited tensors (`names`: id(leaf) -> name) behind
    each None and the line of the backward's return."""
    found: dict[int, NoneGrad] = {}
    for node, i in hits:
        behind = _leaves_under(node.next_functions[i][0], names)
        if not behind:
            continue
        cls = getattr(node, "_forward_cls", None)
        params = _forward_names(cls) if cls is not None else []
        # Backward returns one value per forward argument; where every argument is a tensor input,
        # the position says which.
        position = i if len(params) == len(node.next_functions) else None
        frames = _return_line(cls, position) if cls is not None else None
        if frames is None:
            continue
        entry = found.setdefault(id(node), NoneGrad(getattr(cls, "__name__", "Function"), [frames]))
        entry.leaves |= behind
        if position is not None:
            entry.inputs.append(params[position])
    return list(found.values())
