"""False-alarm and detection rates of the explanation-level warnings, over seeds and input sizes.

    python benchmarks/bench_where.py                  # 200 seeds at 10 and 1,000 elements, 2 at 10^5 and 10^7
    python benchmarks/bench_where.py --seeds 50 --sizes 10 1000 --only relu clamp_logits

`dead-term` and `device-portability` are rules about the code (the traced ops), `saturated-grad`
is a statistical rule (a fraction of zero gradients, judged with Hoeffding's bound at 10^-3). Each
quiet loss (a relu, a hinge, top-k, a wide clamp, a mask, a detached weight, a zero-weighted metric,
the straight-through estimator, device-following code) must get none of them on any seed and size;
each trigger should get its finding once its inputs are big enough for the evidence. Rates are
printed, never asserted (tests/test_corpus.py asserts the single cases).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "losses")]

WARNS = ("dead-term", "saturated-grad", "device-portability")
# name: (loss, inputs as Spec keyword arguments per element count n, the finding it should give or None)
CASES = {
    "relu": ("cause_dead:relu_twin", "xt", None),
    "hinge": ("cause_dead:hinge_twin", "x01", None),
    "topk": ("cause_dead:topk_twin", "xt", None),
    "clamp_wide": ("cause_dead:clamp_wide_twin", "xt", None),
    "clamp_near_half": ("cause_dead:clamp_near_half_twin", "xt", None),
    "hardtanh_scaled": ("cause_dead:hardtanh_wide_twin", "xt", None),
    "mask": ("cause_dead:mask_twin", "xt", None),
    "where": ("cause_dead:where_twin", "xt", None),
    "detached_weight": ("cause_dead:detached_regulariser_twin", "xt", None),
    "zero_weighted_metric": ("cause_dead:zero_weighted_metric_twin", "xt", None),
    "straight_through": ("cause_dead:straight_through_twin", "xt", None),
    "clamp_probabilities": ("cause_dead:clamp_logits_twin", "x01", None),
    "ones_type_as": ("cause_portability:ones_type_as_twin", "xt", None),
    "index_attribute": ("cause_portability:IndexAttributeTwin", "x4", None),
    # triggers
    "clamp_logits": ("cause_dead:clamp_logits", "x01", "saturated-grad"),
    "hardtanh_wide": ("cause_dead:hardtanh_wide", "xt", "saturated-grad"),
    "argmax_penalty": ("cause_dead:argmax_penalty", "labels", "dead-term"),
    "detached_regulariser": ("cause_dead:detached_regulariser", "xt", "dead-term"),
}


def _inputs(kind: str, n: int):
    from gradaudit import Spec

    cols = 4 if kind in ("x4", "labels") else 16 if n >= 16 else 2
    rows = max(1, n // cols)
    x = Spec(shape=(rows, cols))
    if kind == "labels":
        return {"x": x, "t": Spec(shape=(rows,), dtype="int64", init="randint", high=cols, requires_grad=False)}
    if kind == "x01":
        return {"x": x, "t": Spec(shape=(rows, cols), init="randint", high=2, dtype="float32", requires_grad=False)}
    return {"x": x, "t": Spec(shape=(rows, cols), requires_grad=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 100_000, 10_000_000])
    parser.add_argument("--big-seeds", type=int, default=2, help="seeds above 1,000 elements (each audit "
                        "of a moving zero pattern draws up to 40 times)")
    parser.add_argument("--only", nargs="+", help="case names to run")
    args = parser.parse_args()

    import importlib

    from gradaudit import audit

    print(f"{'case':22} {'elements':>10} {'seeds':>6} {'expected':>15} {'got it':>7} {'false warns':>11} {'s/seed':>7}")
    for name, (ref, kind, expected) in CASES.items():
        if args.only and name not in args.only:
            continue
        module, _, attr = ref.partition(":")
        loss = getattr(importlib.import_module(module), attr)
        for n in args.sizes:
            seeds = args.seeds if n <= 1000 else args.big_seeds
            got = false = 0
            start = time.perf_counter()
            for seed in range(seeds):
                result = audit(loss, _inputs(kind, n), devices=["cpu"], seed=seed, root=REPO).results[0]
                ids = [f.id for f in result.findings if f.severity != "info"]
                got += expected in ids
                false += any(i in WARNS and i != expected for i in ids)
            per = (time.perf_counter() - start) / seeds
            print(f"{name:22} {n:>10} {seeds:>6} {expected or '-':>15} {got if expected else '-':>7} "
                  f"{false:>11} {per:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
