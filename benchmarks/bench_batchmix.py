"""Batch independence (`per_sample`): false alarms, detection and cost, over seeds and batch sizes.

    python benchmarks/bench_batchmix.py [--seeds N] [--sizes 2,3,8,64,1024] [--dtypes float32,...]

For each loss and batch size it runs the check of `gradaudit.batchmix` on N seeds (inputs drawn
as the audit draws them) and prints
  - per-sample losses (which must pass): the false alarms, and the largest change of an untouched
    sample's gradient that any seed showed, in ulps of the dtype against the tolerance
    (TOL_ULPS ulps): the margin;
  - losses that mix samples (which must fail): the detections, and the smallest largest change
    a seed showed (how far above the tolerance the weakest detection was);
  - the cost: one check against one bare forward+backward of the same loss on the same inputs
    (median of repeats), as a ratio, for a few realistic sizes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradaudit import batchmix  # noqa: E402
from gradaudit.api import Spec, prepare  # noqa: E402
from gradaudit.devices import current  # noqa: E402
from gradaudit.inputs import make_inputs, to_device  # noqa: E402
from gradaudit.losscall import load_loss  # noqa: E402
from tests.losses import batch_mixing as L  # noqa: E402

C = 5


def logits_targets(b: int, classes: int = C) -> dict:
    return {"logits": Spec(shape=("B", classes)), "target": Spec(shape=("B",), dtype="int64", init="randint",
                                                                  high=classes)}


def pred_target(b: int) -> dict:
    return {"pred": Spec(shape=("B", C)), "target": Spec(shape=("B", C), requires_grad=False)}


def boxes(b: int) -> dict:
    return {"pred": Spec(shape=("B", 4)), "target": Spec(shape=("B", 4), requires_grad=False)}


def binary(b: int) -> dict:
    return {"logits": Spec(shape=("B", C)), "target": Spec(shape=("B", C), init="bernoulli", p=0.1,
                                                            requires_grad=False)}


def weighted(b: int) -> dict:
    return {**logits_targets(b), "weight": Spec(shape=(C,), init="uniform", low=0.1, high=2.0,
                                                requires_grad=False)}


def tokens(b: int) -> dict:
    return {"logits": Spec(shape=("B", 7, C)), "target": Spec(shape=("B", 7), dtype="int64", init="randint",
                                                               high=C)}


def features(b: int) -> dict:
    return {"x": Spec(shape=("B", 64)), "target": Spec(shape=("B",), dtype="int64", init="randint", high=10)}


def norm_inputs(b: int) -> dict:
    return {"x": Spec(shape=("B", 4)), "target": Spec(shape=("B", 4), requires_grad=False)}


def views(b: int) -> dict:
    return {"z1": Spec(shape=("B", 16)), "z2": Spec(shape=("B", 16))}


# name: (loss, inputs)
PER_SAMPLE = {
    "cross-entropy": (L.cross_entropy, logits_targets),
    "cross-entropy sum": (L.cross_entropy_sum, logits_targets),
    "weighted cross-entropy": (L.weighted_cross_entropy, weighted),
    "label-smoothed CE, ignore_index": (L.label_smoothed_ce, logits_targets),
    "token CE [B,7,C], ignore_index": (L.masked_token_ce, tokens),
    "MSE": (L.mse, pred_target),
    "focal": (L.focal, logits_targets),
    "sigmoid focal / num_pos": (L.sigmoid_focal, binary),
    "GIoU": (L.giou, boxes),
    "relu product [B,16] (prod's zero path)": (L.relu_product, lambda b: {
        "x": Spec(shape=("B", 16)), "target": Spec(shape=("B",), requires_grad=False)}),
    "linear head + CE (module)": (L.LinearHead, features),
    "LayerNorm head (module)": (L.LayerNormHead, norm_inputs),
}
MIXING = {
    "softmax over the batch": (L.softmax_over_batch, logits_targets),
    "batch-centred MSE": (L.batch_centred_mse, pred_target),
    "batch mean in two lines": (L.batch_statistic_in_two_lines, pred_target),
    "normalize over the batch": (L.l2_normalised_over_batch, pred_target),
    "mean / std over the batch": (L.mean_over_std, pred_target),
    "BatchNorm head (module)": (L.BatchNormHead, norm_inputs),
    "InfoNCE, in-batch negatives": (L.info_nce, views),
}


class Case:
    """One loss at one batch size and dtype, loaded as the audit loads it; its check per seed."""

    def __init__(self, fn, inputs, b: int, dtype: str, device: str = "cpu") -> None:
        self.fn, self.inputs, self.b, self.dtype = fn, inputs, b, dtype
        self.device = device

    def load(self, seed: int):
        # A one-entry precision matrix casts a module loss's parameters too.
        spec = prepare(self.fn, self.inputs(self.b), dims={"B": self.b}, per_sample="B", seed=seed,
                       dtypes=[self.dtype], devices=[self.device])[0]
        return load_loss(spec, self.device, Path.cwd(), current())

    def check(self, seed: int) -> batchmix.BatchCheck:
        return batchmix.check_call(self.load(seed))


def sweep(table: dict, sizes: list[int], seeds: int, dtypes: list[str], root: Path,
          device: str) -> list[dict]:
    rows = []
    for dtype in dtypes:
        eps = torch.finfo(getattr(torch, dtype)).eps
        for name, (fn, inputs) in table.items():
            for b in sizes:
                case = Case(fn, inputs, b, dtype, device)
                fails, checked, changes, ratios, reasons = 0, 0, [], [], set()
                per_split: dict[str, float] = {}
                for seed in range(seeds):
                    found = case.check(seed)
                    if not found.checked:
                        reasons.add(found.reason)
                        continue
                    checked += 1
                    fails += found.coupling is not None
                    changes.append(max(found.changes.values()))
                    ratios.append(max(found.changes[k] / found.tolerances[k] for k in found.changes))
                    for split, change in found.changes.items():
                        per_split[split] = max(per_split.get(split, 0.0), change / eps)
                rows.append({"dtype": dtype, "loss": name, "B": b, "checked": checked, "fail": fails,
                             "max_ulps": max(changes) / eps if changes else float("nan"),
                             "min_ulps": min(changes) / eps if changes else float("nan"),
                             "reasons": sorted(reasons), "per_split": per_split,
                             "max_ratio": max(ratios, default=float("nan")),
                             "min_ratio": min(ratios, default=float("nan"))})
    return rows


def cost(root: Path, repeats: int, device: str) -> list[tuple[str, float, float, float]]:
    """Median time of one check and of one bare forward+backward, for realistic sizes."""
    cases = [("cross-entropy 256x1000", L.cross_entropy, lambda b: logits_targets(b, 1000), 256),
             ("focal 256x1000", L.focal, lambda b: logits_targets(b, 1000), 256),
             ("GIoU 4096 boxes", L.giou, boxes, 4096),
             ("label-smoothed CE 1024x100", L.label_smoothed_ce, lambda b: logits_targets(b, 100), 1024)]
    out = []
    for name, fn, inputs, b in cases:
        call = Case(fn, inputs, b, "float32", device).load(0)
        cpu = make_inputs(call.specs, call.spec.seed, call.spec.draw_name, 0, root)
        bare, checks = [], []
        for _ in range(repeats):
            live = to_device(cpu, call.specs, call.device)
            _sync(call.device)
            t0 = time.perf_counter()
            call.fn(*live.values()).backward()
            _sync(call.device)
            bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            batchmix.check_call(call)
            _sync(call.device)
            checks.append(time.perf_counter() - t0)
        b_med, c_med = statistics.median(bare), statistics.median(checks)
        out.append((name, b_med, c_med, c_med / b_med))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--mixing-seeds", type=int, default=20)
    parser.add_argument("--sizes", default="2,3,8,64,1024")
    parser.add_argument("--dtypes", default="float32,float64,bfloat16,float16")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    dtypes = args.dtypes.split(",")
    root = Path.cwd()
    start = time.perf_counter()
    print(f"torch {torch.__version__} on {args.device}, {torch.get_num_threads()} CPU thread; tolerance in ulps of the "
          f"gradient's dtype: {batchmix.EXACT_ULPS} where only graded inputs are re-drawn (the exact "
          f"split), {batchmix.TOL_ULPS} where targets are too (noise widens both)\n")
    print(f"## Per-sample losses: false alarms ({args.seeds} seeds each)\n")
    print("| dtype | loss | " + " | ".join(f"B={b}" for b in sizes)
          + " | largest change, ulps (exact split) | of tolerance |")
    print("|---|---|" + "---|" * len(sizes) + "---|---|")
    good = sweep(PER_SAMPLE, sizes, args.seeds, dtypes, root, args.device)
    total_checked = total_fail = 0
    for dtype in dtypes:
        for name in PER_SAMPLE:
            rows = [r for r in good if r["loss"] == name and r["dtype"] == dtype]
            cells = [f"{r['fail']}/{r['checked']}" for r in rows]
            worst = max(r["max_ulps"] for r in rows)
            exact = max(r["per_split"].get("half", 0.0) for r in rows)
            margin = max(r["max_ratio"] for r in rows)
            total_checked += sum(r["checked"] for r in rows)
            total_fail += sum(r["fail"] for r in rows)
            print(f"| {dtype} | {name} | " + " | ".join(cells) + f" | {worst:.3g} ({exact:.3g}) | {margin:.2f} |")
    print(f"\nfalse alarms: {total_fail} of {total_checked} checks "
          f"({total_fail / max(total_checked, 1):.2%})")
    skipped = {reason for r in good for reason in r["reasons"]}
    if skipped:
        print("not checked (some seeds): " + "; ".join(sorted(skipped)))
    print(f"\n## Losses that mix samples: detections ({args.mixing_seeds} seeds each)\n")
    print("| dtype | loss | " + " | ".join(f"B={b}" for b in sizes) + " | weakest seed: change / tolerance |")
    print("|---|---|" + "---|" * len(sizes) + "---|")
    bad = sweep(MIXING, sizes, args.mixing_seeds, dtypes, root, args.device)
    total_checked = total_found = 0
    for dtype in dtypes:
        for name in MIXING:
            rows = [r for r in bad if r["loss"] == name and r["dtype"] == dtype]
            cells = [f"{r['fail']}/{r['checked']}" for r in rows]
            weakest = min(r["min_ratio"] for r in rows)
            total_checked += sum(r["checked"] for r in rows)
            total_found += sum(r["fail"] for r in rows)
            print(f"| {dtype} | {name} | " + " | ".join(cells) + f" | {weakest:.3g}x |")
    print(f"\ndetected: {total_found} of {total_checked} checks ({total_found / max(total_checked, 1):.2%})")
    print("\n## Cost: one check against one bare forward+backward (median)\n")
    print("| loss | bare ms | check ms | ratio |")
    print("|---|---|---|---|")
    for name, b_med, c_med, ratio in cost(root, args.repeats, args.device):
        print(f"| {name} | {b_med * 1e3:.2f} | {c_med * 1e3:.2f} | {ratio:.1f}x |")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
