"""How often the zero-pattern test is wrong: false alarms of correct sparse losses, misses of broken twins.

    python benchmarks/bench_verdicts.py [--seeds 300] [--quick]

Part 1, small shapes (a batch of 8): every correct loss of tests/losses/verdicts.py (hinge,
relu(x)**2, triplet margin 8x4, margin ranking, hinge embedding, multi-margin, GIoU-style box
clamps, OHEM top-k, a feature-map relu) over `--seeds` seeds (the seed of the case), and each
broken twin (a detached column, block of rows or channel) over the same seeds: how many fail,
the draws used (mean / max) and, for the twins, how many findings point at the `# CULPRIT` line.
Part 2, sizes from 10 to 10^7 elements: the losses with moving zeros at each size, fewer seeds as
the size grows, and the detached column / block of rows at 0.5M-4M elements.
Each case is audited as `gradaudit.audit` does it (in process, with the root-cause tracer).
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gradaudit.api import prepare  # noqa: E402
from gradaudit.caseaudit import AuditContext, audit_case  # noqa: E402
from gradaudit.tracing import default_observers  # noqa: E402
from gradaudit.tracks import MAX_DRAWS  # noqa: E402
from tests.losses import verdicts as V  # noqa: E402

SOURCE = Path(V.__file__)
CULPRITS = {m.group(1): i for i, line in enumerate(SOURCE.read_text().splitlines(), 1)
            if (m := re.search(r"# CULPRIT: (\w+)", line))}
CTX = AuditContext(root=ROOT, observers=default_observers())


def kind_of(twin: str) -> str:
    return twin.rsplit("_", 1)[1]


def run_case(fn, inputs: dict, seed: int):
    spec = prepare(fn, inputs, name=fn.__name__, seed=seed, devices=["cpu"])[0]
    return audit_case(spec, "cpu", CTX)


def located(result, twin: str) -> bool:
    line = CULPRITS[kind_of(twin)]
    return any(f.location is not None and f.location.line == line and f.location.file.endswith("verdicts.py")
               for f in result.findings if f.severity == "fail")


def measure(fn, inputs: dict, seeds: range, twin: str | None = None) -> dict:
    fails = draws = most = hits = 0
    start = time.perf_counter()
    example = ""
    for seed in seeds:
        result = run_case(fn, inputs, seed)
        failed = result.status != "pass"
        fails += failed
        draws += result.draws
        most = max(most, result.draws)
        if twin is not None:
            hits += located(result, twin)
        if failed and not example:
            example = f"seed {seed}: {result.summary_line[:110]}"
    n = len(seeds)
    return {"n": n, "fails": fails, "mean": draws / n, "max": most, "located": hits,
            "s": (time.perf_counter() - start) / n, "example": example}


def first_size(inputs: dict) -> int:
    """Elements of a case's first input (the one the twins cut)."""
    return int(torch.Size(next(iter(inputs.values()))["shape"]).numel())


def row(label: str, size: int, m: dict, twin: bool) -> str:
    rate = f"{m['fails']}/{m['n']}"
    where = f"{m['located']}/{m['n']}" if twin else ""
    return (f"| {label} | {size:,} | {'detection' if twin else 'false alarms'} {rate} | {where} | "
            f"{m['mean']:.1f} / {m['max']} | {m['s']:.2f} |")


HEADER = ("| case | elements | failed | at the culprit line | draws mean / max | s per case |\n"
          "|---|---|---|---|---|---|")


def small(seeds: int) -> list[str]:
    lines = []
    for _name, (loss, inputs, twins) in V.cases(8).items():
        size = first_size(inputs)
        m = measure(loss, inputs, range(seeds))
        lines.append(row(loss.__name__, size, m, False))
        if m["example"]:
            lines.append(f"|  ↳ {m['example']} | | | | | |")
        for twin in twins:
            t = measure(getattr(V, twin), inputs, range(seeds), twin)
            lines.append(row(twin, size, t, True))
        print("\n".join(lines[-1 - len(twins):]), flush=True)
    return lines


# Part 2: the batch sizes that make the first input 10 .. 10^7 elements, with seeds per size.
SIZES = [(10, 300), (1_000, 300), (100_000, 30), (1_000_000, 5), (10_000_000, 2)]
BIG = {"hinge": 4, "relu_sq": 4, "box_clamps": 4, "ohem": 8}  # elements per batch row of the first input
BIG_TWINS = [("relu_sq_column", 524_288, 3), ("relu_sq_rows", 524_288, 3), ("box_clamps_column", 524_288, 3),
             ("box_clamps_rows", 524_288, 3), ("ohem_column", 262_144, 2), ("hinge_rows", 524_288, 3)]


def sizes(scale: float) -> list[str]:
    lines = []
    for elements, seeds in SIZES:
        seeds = max(1, int(seeds * scale))
        for name, per_row in BIG.items():
            batch = max(1, elements // per_row)
            loss, inputs, _ = V.cases(batch)[name]
            m = measure(loss, inputs, range(seeds))
            lines.append(row(name, first_size(inputs), m, False))
            if m["example"]:
                lines.append(f"|  ↳ {m['example']} | | | | | |")
            print(lines[-1], flush=True)
    for twin, batch, seeds in BIG_TWINS:
        base = next(v for v in V.cases(batch).values() if twin in v[2])
        m = measure(getattr(V, twin), base[1], range(max(1, int(seeds * scale))), twin)
        lines.append(row(twin, first_size(base[1]), m, True))
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=300, help="seeds per small case (default 300)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the seeds, for a smoke run")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, python {platform.python_version()}; cap {MAX_DRAWS} draws")
    print("\n## Small shapes (batch 8)\n")
    print(HEADER, flush=True)
    small(max(1, int(args.seeds * scale)))
    print("\n## Sizes from 10 to 10^7 elements\n")
    print(HEADER, flush=True)
    sizes(scale)


if __name__ == "__main__":
    main()
