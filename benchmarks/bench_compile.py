"""torch.compile parity: what compiling costs, and how often the eager comparison false-alarms.

    python benchmarks/bench_compile.py [--backends aot_eager,inductor] [--quick]

Part 1, cost, for a small loss (cross entropy on [32, 10]) and each backend:
  - a whole `case[compile=BACKEND]` entry (explain, compile, every draw with its eager reference)
    against the eager entry, as `gradaudit run` runs them, with Inductor's on-disk cache empty (a
    fresh CI machine) and warm (the same graphs again), and `compile_s`, the first compiled
    forward + backward (dynamo, the backend's forward and its lazily compiled backward);
  - the first torch.compile of a process (dynamo's imports), which a worker pays once.
Part 2, false alarms: correct losses at 10 to 10^7 elements, many seeded draws each, compiled once
per (loss, size, dtype), compared with eager by the audit's own rule (`parity.compare_draw` at
`parity.tolerances` of the default rtol 1e-4 / atol 1e-5, raised for low precision). A draw with
any element outside is a false alarm: the rate must be 0. `margin` is the largest
|compiled - eager| / (atol + rtol * |eager|) seen: under 1 is inside the tolerance.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# A cold start, as on a fresh CI machine: Inductor's on-disk caches in a new folder.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="gradaudit-bench-inductor-")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradaudit.api import Spec, prepare  # noqa: E402
from gradaudit.caseaudit import AuditContext, CaseAudit  # noqa: E402
from gradaudit.parity import compare_draw, tolerances  # noqa: E402
from gradaudit.tracing import default_observers  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


def mse(pred, target):
    return F.mse_loss(pred, target)


def cross_entropy(logits, target):
    return F.cross_entropy(logits, target.argmax(-1))


def soft_ce(logits, target):
    return -(F.log_softmax(logits, -1) * F.softmax(target, -1)).sum(-1).mean()


def layer_norm_smooth_l1(x, target):
    return F.smooth_l1_loss(F.layer_norm(x, x.shape[-1:]), target)


LOSSES = [mse, cross_entropy, soft_ce, layer_norm_smooth_l1]


def _shape(numel: int) -> tuple[int, int]:
    width = min(numel, 100)
    return (numel // width, width)


def _draw(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    target = torch.randn(shape, generator=g).to(dtype)
    return pred, target


def _loss_and_grad(fn, pred, target):
    pred.grad = None
    loss = fn(pred, target)
    loss.backward()
    return loss.detach(), {"pred": pred.grad.detach().clone()}


def _margin(ref, got, rtol, atol) -> float:
    r, g = ref.double(), got.double()
    return float(((g - r).abs() / (atol + rtol * r.abs())).max())


def false_alarms(backend: str, sizes: list[int], draws_at, dtypes: list[str]) -> None:
    print(f"\n## False alarms, backend {backend} (rtol {RTOL:g}, atol {ATOL:g}, raised for low precision)\n")
    print("| loss | elements | dtype | draws | false alarms | margin (loss) | margin (grad) | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for fn in LOSSES:
        for numel in sizes:
            for dtype_name in dtypes if numel < 10_000_000 else dtypes[:1]:  # 10^7 at bfloat16: minutes
                dtype = getattr(torch, dtype_name)
                rtol, atol = tolerances(RTOL, ATOL, [dtype_name])
                torch._dynamo.reset()
                compiled = torch.compile(fn, backend=backend)
                draws = draws_at(numel)
                alarms, worst_loss, worst_grad, compile_s = 0, 0.0, 0.0, 0.0
                for seed in range(draws):
                    pred, target = _draw(_shape(numel), dtype, seed)
                    ref = _loss_and_grad(fn, pred, target)
                    start = time.perf_counter()
                    got = _loss_and_grad(compiled, pred, target)
                    if seed == 0:
                        compile_s = time.perf_counter() - start
                    alarms += bool(compare_draw(ref, got, rtol, atol))
                    worst_loss = max(worst_loss, _margin(ref[0], got[0], rtol, atol))
                    worst_grad = max(worst_grad, _margin(ref[1]["pred"], got[1]["pred"], rtol, atol))
                print(f"| {fn.__name__} | {numel:,} | {dtype_name} | {draws} | {alarms} | {worst_loss:.3f} | "
                      f"{worst_grad:.3f} | {compile_s:.1f} |", flush=True)


def _entries(backends: list[str], name: str) -> dict:
    """Audit the eager entry and one compiled entry per backend, as `gradaudit run` does."""
    inputs = {"logits": Spec(shape=(32, 10)), "target": Spec(shape=(32, 10), requires_grad=False)}
    specs = prepare(cross_entropy, inputs, name=name, devices=["cpu"], compile=backends)
    ctx = AuditContext(root=Path.cwd(), observers=default_observers())
    entries = {}
    for spec in specs:
        start = time.perf_counter()
        result = CaseAudit(spec, "cpu", ctx).run()
        assert result.status == "pass", (result.case, result.summary_line)
        entries[spec.compile] = (time.perf_counter() - start, result)
    return entries


def cost(backends: list[str]) -> None:
    print("\n## Cost: cross entropy on [32, 10], one audit entry each (2 draws)\n")
    start = time.perf_counter()
    torch.compile(lambda x: x * 2, backend="eager")(torch.ones(1))
    torch._dynamo.list_backends(exclude_tags=())
    print(f"The first torch.compile in a process (dynamo's imports): {time.perf_counter() - start:.1f} s\n")
    cold = _entries(backends, "cold")  # an empty Inductor cache (set below, before torch's import)
    warm = _entries(backends, "warm")  # the same graphs again: Inductor's on-disk cache hits
    print("| backend | eager entry s | compiled entry s, empty cache | of it compile_s | explain_s "
          "| compiled entry s, warm cache | of it compile_s |")
    print("|---|---|---|---|---|---|---|")
    for backend in backends:
        (c_wall, c_res), (w_wall, w_res) = cold[backend], warm[backend]
        print(f"| {backend} | {cold[None][0]:.2f} | {c_wall:.1f} | {c_res.compile['compile_s']:.1f} | "
              f"{c_res.compile['explain_s']:.1f} | {w_wall:.1f} | {w_res.compile['compile_s']:.1f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="aot_eager,inductor")
    parser.add_argument("--quick", action="store_true", help="two sizes, few draws (a smoke run)")
    args = parser.parse_args()
    backends = args.backends.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    cost(backends)
    if args.quick:
        sizes, dtypes = [10, 10_000], ["float32"]
        draws_at = lambda n: 5  # noqa: E731
    else:
        sizes, dtypes = [10, 1_000, 100_000, 10_000_000], ["float32", "bfloat16"]
        draws_at = lambda n: 100 if n <= 100_000 else 5  # noqa: E731
    for backend in backends:
        if backend != "aot_eager":  # aot_eager runs eager's kernels: nothing to measure beyond cost
            false_alarms(backend, sizes, draws_at, dtypes)


if __name__ == "__main__":
    main()
