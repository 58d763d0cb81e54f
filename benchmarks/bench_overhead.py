"""What tracing costs: one bare forward+backward against one audited draw, for realistic losses.

    python benchmarks/bench_overhead.py [--repeats N] [--device cpu]

For each loss it prints the median time of
  - bare:    `loss_fn(*inputs).backward()` on ready-made inputs,
  - spine:   one audit draw without the root-cause trace (verdict bookkeeping only),
  - audited: one audit draw as `gradaudit run` does it, with the trace (TorchFunctionMode op trace,
             per-tensor tags),
each timed draw being draw 0 of a fresh case (new tracks and loss facts, made before the clock
starts), as a run's traced draw is;
and the ratios audited / bare (the target: <= 1.5x) and audited / spine (what the trace alone
adds); each as the median, with the best time in parentheses.
Anomaly mode is not in the normal path: gradaudit re-runs a draw under it only after a failure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradaudit.api import Spec, prepare  # noqa: E402
from gradaudit.devices import current  # noqa: E402
from gradaudit.draws import DrawLoop, DrawRecord, tracks_of  # noqa: E402
from gradaudit.losscall import load_loss  # noqa: E402
from gradaudit.tracing import default_observers  # noqa: E402


def cross_entropy(logits, targets):
    return F.cross_entropy(logits, targets)


def focal(logits, targets, gamma=2.0):
    ce = F.cross_entropy(logits, targets, reduction="none")
    p = torch.exp(-ce)
    return ((1 - p) ** gamma * ce).mean()


def giou(pred, target):
    """Generalized IoU loss on (x1, y1, x2, y2) boxes made valid from raw regressions."""
    p = torch.cat([pred[:, :2], pred[:, :2] + pred[:, 2:].abs() + 1e-3], dim=1)
    t = torch.cat([target[:, :2], target[:, :2] + target[:, 2:].abs() + 1e-3], dim=1)
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    area_t = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    lt = torch.max(p[:, :2], t[:, :2])
    rb = torch.min(p[:, 2:], t[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area_p + area_t - inter
    iou = inter / union
    lt_c = torch.min(p[:, :2], t[:, :2])
    rb_c = torch.max(p[:, 2:], t[:, 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    area_c = wh_c[:, 0] * wh_c[:, 1]
    return (1 - (iou - (area_c - union) / area_c)).mean()


def contrastive(a, b, temperature=0.07):
    """InfoNCE on two views of 512 embeddings."""
    a = F.normalize(a, dim=1)
    b = F.normalize(b, dim=1)
    logits = a @ b.T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


LOSSES = {
    "cross-entropy 256x1000": (cross_entropy, {"logits": Spec(shape=(256, 1000)),
                                               "targets": Spec(shape=(256,), dtype="int64", init="randint",
                                                               high=1000)}),
    "focal 256x1000": (focal, {"logits": Spec(shape=(256, 1000)),
                               "targets": Spec(shape=(256,), dtype="int64", init="randint", high=1000)}),
    "GIoU 4096 boxes": (giou, {"pred": Spec(shape=(4096, 4)),
                               "target": Spec(shape=(4096, 4), requires_grad=False)}),
    "contrastive 512x128": (contrastive, {"a": Spec(shape=(512, 128)), "b": Spec(shape=(512, 128))}),
}


def medians_ms(fns: list, repeats: int, clock=time.perf_counter) -> list[tuple[float, float]]:
    """Median and best time of each function, timed in turn (interleaved, so load on a shared
    machine hits them alike). `clock=time.thread_time` counts this thread's CPU time only: on a
    loaded machine it leaves out the waits for a core."""
    befores = [getattr(fn, "before", None) or (lambda: None) for fn in fns]  # set-up left out of the time
    for fn, before in zip(fns, befores, strict=True):
        for _ in range(3):
            before()
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, before, bucket in zip(fns, befores, times, strict=True):
            before()
            start = clock()
            fn()
            bucket.append(clock() - start)
    return [(statistics.median(bucket) * 1000, min(bucket) * 1000) for bucket in times]


def measure(loss, inputs, device: str, repeats: int, clock=time.perf_counter) -> tuple[float, float, float]:
    spec = prepare(loss, inputs, devices=[device])[0]

    def draw_loop(observers):
        call = load_loss(spec, device, Path.cwd(), current())
        ready = call.inputs(0)
        call.inputs = lambda draw: ready  # time the draw, not the making of its inputs
        return DrawLoop(call, spec, observers, keep_first=False), ready

    (plain, ready), (traced, _) = draw_loop([]), draw_loop(default_observers())
    tensors = {name: ready.leaves.get(name, t) for name, t in ready.received.items()}
    leaves = [t for t in tensors.values() if t.requires_grad]

    def bare():
        for leaf in leaves:
            leaf.grad = None
        loss(*tensors.values()).backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def one_draw(loop):
        def run():
            assert loop.one(0), loop.record  # every timed draw is draw 0, the fully traced one
        run.before = lambda: fresh_case(loop)
        return run

    # As in a run: the caller's random state and warning filters are kept once around a case's draws.
    with plain.call.holding(), traced.call.holding():
        bare_ms, spine_ms, audited_ms = medians_ms([bare, one_draw(plain), one_draw(traced)], repeats, clock)
    return bare_ms, spine_ms, audited_ms


def fresh_case(loop: DrawLoop) -> None:
    """Make the next `loop.one(0)` the draw 0 of a fresh case, as a run's traced draw is: new
    tracks (the first gradient of a case also pays for its norm) and new loss facts."""
    loop.record = DrawRecord(tracks=tracks_of(loop.call))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print("| loss | bare fwd+bwd | spine draw | audited draw | audited / bare | trace alone |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (loss, inputs) in LOSSES.items():
        bare, spine, audited = measure(loss, inputs, args.device, args.repeats)
        ratio, best_ratio = audited[0] / bare[0], audited[1] / bare[1]
        flag = "" if ratio <= 1.5 else " (over 1.5x)"
        print(f"| {name} | {_ms(bare)} | {_ms(spine)} | {_ms(audited)} | {ratio:.2f}x{flag} "
              f"(best {best_ratio:.2f}x) | {audited[0] / spine[0]:.2f}x (best {audited[1] / spine[1]:.2f}x) |")


def _ms(times: tuple[float, float]) -> str:
    return f"{times[0]:.2f} ms (best {times[1]:.2f})"

if __name__ == "__main__":
    main()
