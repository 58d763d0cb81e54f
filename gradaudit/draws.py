"""The draw loop: call the loss on fresh draws until the tracks have said enough; record what it did.

Each draw goes through the case's `LossCall` with the observers' contexts around its forward (the
tracer of the first draw); its gradients feed one `Track` per audited tensor, and the case's `StopRule`
says when to stop. What the loss returned and how a draw failed are recorded as plain facts in a
`DrawRecord`; the explanations turn them into findings.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from gradaudit.config import CaseSpec
from gradaudit.losscall import DrawInputs, DrawOutcome, LossCall
from gradaudit.model import LossInfo
from gradaudit.tracks import MAX_DRAWS, StopRule, Track


class Observer(Protocol):
    """Watches the draws of a case (the tracer): a context around each draw's forward, and the loss
    returned."""

    def draw_context(self, draw: int, inputs: DrawInputs) -> contextlib.AbstractContextManager[Any]: ...

    def loss_returned(self, value: Any) -> None: ...


@dataclass
class LossFacts:
    """What the loss returned, as far as a verdict needs it."""

    info: LossInfo | None = None  # the first draw's loss: value, shape, dtype, grad_fn
    shape: list[int] | None = None  # draw 0's shape where the loss is not a scalar (it is summed)
    # Why the draws stopped at the loss: "number" (a Python number), "other" (not a tensor at all),
    # "no-grad" (a tensor that does not require grad); None where the loss was a graph.
    stop: str | None = None
    returned: str = ""  # the type, or the dtype for "no-grad"
    nonfinite_draw: int | None = None  # the first draw whose loss was NaN/Inf
    nonfinite_value: float = 0.0


@dataclass
class DrawRecord:
    """What the draws of one case did."""

    draws: int = 0  # draws that ran to the end of backward
    tracks: dict[str, Track] = field(default_factory=dict)
    loss: LossFacts = field(default_factory=LossFacts)
    failure: DrawOutcome | None = None  # the draw whose inputs, forward or backward raised
    nonfinite_grad_draw: int | None = None  # the first draw with a NaN/Inf gradient
    first: tuple[torch.Tensor, dict[str, torch.Tensor | None]] | None = None  # draw 0 on the CPU (parity)
    warnings: list[str] = field(default_factory=list)  # the loss's warnings, once each


def tracks_of(call: LossCall) -> dict[str, Track]:
    """One track per input and module parameter of the case, frozen parameters included."""
    tracks: dict[str, Track] = {}
    if call.module is not None:
        for name, p in call.module.named_parameters():
            if not p.requires_grad:
                tracks[f"param:{name}"] = Track(f"param:{name}", list(p.shape),
                                                str(p.dtype).removeprefix("torch."), False)
    for spec in call.specs:
        tracks[spec.name] = Track(spec.name, list(spec.shape), spec.dtype, spec.requires_grad)
    for name, p in call.params.items():
        tracks[name] = Track(name, list(p.shape), str(p.dtype).removeprefix("torch."), True)
    if max(call.spec.repeats, MAX_DRAWS) > 255:
        for track in tracks.values():
            track.count_dtype = torch.int32
    return tracks


class DrawLoop:
    """The draws of one case on one device."""

    def __init__(self, call: LossCall, spec: CaseSpec, observers: list[Observer], keep_first: bool) -> None:
        self.call = call
        self.spec = spec
        self.observers = observers
        self.keep_first = keep_first  # keep draw 0's loss and gradients for a parity check
        self.record = DrawRecord(tracks=tracks_of(call))
        self.rule = StopRule(self.record.tracks, spec)
        # The observers that compare draws (a compiled entry's eager twin), looked up once.
        self._draw_done = [done for obs in observers if (done := getattr(obs, "draw_done", None)) is not None]

    def run(self) -> DrawRecord:
        record = self.record
        with self.call.holding():  # each draw seeds; the caller's state and warning filters come back once
            while self.one(record.draws):
                record.draws += 1
                if not self.rule.wants_more(record.draws):
                    break
        return record

    def _observed(self, draw: int, inputs: DrawInputs) -> contextlib.AbstractContextManager[Any]:
        """The observers' contexts around a draw's forward (the common cases, none or one, without a stack)."""
        if len(self.observers) == 1:
            return self.observers[0].draw_context(draw, inputs)
        return self._stacked(draw, inputs)

    @contextlib.contextmanager
    def _stacked(self, draw: int, inputs: DrawInputs) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for obs in self.observers:
                stack.enter_context(obs.draw_context(draw, inputs))
            yield

    def one(self, draw: int) -> bool:
        """Run one draw; False when the audit must stop (an error, or a loss with no graph)."""
        record = self.record
        observed = (lambda inputs: self._observed(draw, inputs)) if self.observers else None
        out = self.call.run(draw, grads=True, forward_mode=observed)
        self._keep_warnings(out)
        if out.stage in ("inputs", "forward"):
            record.failure = out
            return False
        for obs in self.observers:
            obs.loss_returned(out.value)
        if not self._loss_facts(out):
            return False
        if out.error is not None:
            record.failure = out
            return False
        if self.keep_first and draw == 0:  # copies: the tracks below take the gradients over
            record.first = (out.loss.detach().to("cpu", copy=True),
                            {n: g.detach().to("cpu", copy=True) if g is not None else None
                             for n, g in out.grads.items()})
        for done in self._draw_done:
            done(out)
        # Last: the gradients are this draw's own (fresh .grad of our leaves), read by nothing after
        # this, so each track may overwrite its gradient while it counts it.
        for name, track in record.tracks.items():
            if track.requires_grad:
                track.add(out.grads.get(name), consume=True)
                if track.nonfinite and record.nonfinite_grad_draw is None:
                    record.nonfinite_grad_draw = draw
        out.grads = {}
        return True

    def _keep_warnings(self, out: DrawOutcome) -> None:
        for w in out.warnings:
            text = f"{w.category.__name__}: {str(w.message).split(' (Triggered internally')[0]}"
            if "Anomaly Detection has been enabled" not in text and text not in self.record.warnings:
                self.record.warnings.append(text)

    def _loss_facts(self, out: DrawOutcome) -> bool:
        """Note what the loss returned; False where it has no graph to audit."""
        facts, draw, value = self.record.loss, out.draw, out.value
        if not isinstance(value, torch.Tensor):
            if isinstance(value, (int, float)) or type(value).__module__ == "numpy":
                number = _plain_float(value)
                facts.info = LossInfo(value=number, shape=[], dtype=type(value).__name__, requires_grad=False,
                                      grad_fn=None, finite=number is not None and math.isfinite(number))
                facts.stop = "number"
            else:
                facts.stop = "other"
            facts.returned = type(value).__name__
            return False
        loss = out.loss
        if draw == 0:
            grad_fn = value.grad_fn
            facts.info = LossInfo(
                value=None, shape=list(value.shape), dtype=str(value.dtype).removeprefix("torch."),
                requires_grad=value.requires_grad,
                grad_fn=type(grad_fn).__name__ if grad_fn is not None else None, finite=True,
                picked=out.picked)
            if loss is not value:
                facts.shape = list(value.shape)
        if loss.is_floating_point():  # the common case: one read of the value
            # As float32, as before: a float64 beyond its range is Inf (the others read exactly).
            number = float(loss.detach().float()) if loss.dtype is torch.float64 else loss.item()
            finite, scalar = math.isfinite(number), number
        elif loss.is_complex():
            scalar = loss.detach().float().cpu()
            finite = bool(torch.isfinite(scalar).all())
        else:
            scalar, finite = loss.detach().double().cpu(), True
        if draw == 0 and facts.info is not None:
            facts.info.value = float(scalar.real if isinstance(scalar, torch.Tensor) and scalar.is_complex()
                                     else scalar)
            facts.info.finite = finite
        if not loss.requires_grad:
            facts.stop = "no-grad"
            facts.returned = "" if loss.is_floating_point() else str(loss.dtype).removeprefix("torch.")
            return False
        if not finite and facts.nonfinite_draw is None:
            facts.nonfinite_draw = draw
            facts.nonfinite_value = float(scalar)
        return True


def _plain_float(value: Any) -> float | None:
    """A Python or numpy number as a float; None for what has no single float (an array, 10**400)."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None
