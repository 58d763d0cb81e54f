"""What keeping cases apart costs per case: the process-state check and the reaping of children.

    python benchmarks/bench_isolation.py [--repeats N]

After every case a worker compares the process state with the state it started from
(`Snapshot.changes`: torch's switches, the attributes of the watched namespaces, sys.modules, the
environment) and reaps the processes the case left (`end_children`). An in-process run also takes
a snapshot once per run (`Snapshot.take`). This prints the median and best time of each, and of
one plain forward+backward of a small loss (cross-entropy on 64 x 10 logits) in the same process,
with the ratios against it, and what a case's audit costs (two or more draws) for scale.
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

from gradaudit.processstate import Snapshot  # noqa: E402
from gradaudit.workers import end_children  # noqa: E402


def _times(fn, repeats: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), min(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logits = torch.randn(64, 10, requires_grad=True)
    targets = torch.randint(0, 10, (64,))

    def bare() -> None:
        F.cross_entropy(logits, targets).backward()

    bare()
    snapshot = Snapshot.take()
    rows = [("forward+backward (cross-entropy 64x10)", _times(bare, args.repeats)),
            ("Snapshot.take (once per worker / run)", _times(Snapshot.take, args.repeats)),
            ("Snapshot.changes (after every case)", _times(snapshot.changes, args.repeats)),
            ("end_children (after every case, none left)", _times(end_children, args.repeats))]
    base = rows[0][1][0]
    print(f"{'step':46} {'median ms':>10} {'best ms':>9} {'x fwd+bwd':>10}")
    for name, (median, best) in rows:
        print(f"{name:46} {median * 1e3:10.3f} {best * 1e3:9.3f} {median / base:9.1f}x")
    per_case = rows[2][1][0] + rows[3][1][0]
    print(f"per case: {per_case * 1e3:.2f} ms, {per_case / base:.1f}x one forward+backward of this loss "
          f"(sys.modules: {len(sys.modules)} entries, torch: {len(vars(torch))} attributes)")


if __name__ == "__main__":
    main()
