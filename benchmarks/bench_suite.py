"""Scale benchmark: how `gradaudit run` spends its time on suites of 50, 200 and 1,000 small losses.

    python benchmarks/bench_suite.py                # N = 50, 200, 1000
    python benchmarks/bench_suite.py --sizes 50 200 --markdown

For each N it writes a config of N cases (twelve realistic small losses: cross-entropy, focal,
dice, triplet, contrastive, ... at several batch sizes) and prints, in one run:

- the wall time of `gradaudit run` with `--jobs 1` and with every usable core,
- the sum of the bare forward+backward times of the same cases (one call each, inputs ready),
- the time of one `import torch` in a fresh interpreter,
- the ratios, against the target  wall(all cores) <= 1.2 x (bare / cores + one torch import),
- the sum of the audits' own times (each result's duration_s: every draw, the tracer, the
  verdicts), and the wall time against (audits / cores + one torch import): what the pool itself
  costs beyond the audits,
- the peak memory (RSS) of the largest worker, which must stay flat as N grows (no leak).

Timings are printed, never asserted: they depend on the machine and on its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

LOSSES = '''
"""Realistic small losses, each written as people write them."""

import torch
import torch.nn.functional as F


def cross_entropy(logits, target):
    return F.cross_entropy(logits, target)


def label_smoothing(logits, target):
    return F.cross_entropy(logits, target, label_smoothing=0.1)


def focal(logits, target, gamma=2.0):
    logp = F.log_softmax(logits, dim=-1)
    logp_t = logp.gather(1, target[:, None]).squeeze(1)
    return (-(1 - logp_t.exp()) ** gamma * logp_t).mean()


def dice(logits, mask):
    p = torch.sigmoid(logits)
    inter = (p * mask).sum(dim=1)
    return (1 - (2 * inter + 1) / (p.sum(dim=1) + mask.sum(dim=1) + 1)).mean()


def smooth_l1(pred, target):
    return F.smooth_l1_loss(pred, target)


def mse(pred, target):
    return ((pred - target) ** 2).mean()


def kl_div(logits, teacher):
    return F.kl_div(F.log_softmax(logits, dim=-1), teacher, reduction="batchmean")


def bce_logits(logits, target):
    return F.binary_cross_entropy_with_logits(logits, target)


def triplet(anchor, positive, negative):
    return F.triplet_margin_loss(anchor, positive, negative, margin=1.0)


def contrastive(a, b, temperature=0.1):
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / temperature
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def cosine_embedding(a, b):
    return (1 - F.cosine_similarity(a, b, dim=-1)).mean()


def huber_regression(pred, target):
    return F.huber_loss(pred, target, delta=0.5)
'''

# loss name -> inputs (YAML flow mappings, with B and C from dims)
INPUTS = {
    "cross_entropy": "{logits: {shape: [B, C]}, target: {shape: [B], dtype: int64, init: randint, high: C}}",
    "label_smoothing": "{logits: {shape: [B, C]}, target: {shape: [B], dtype: int64, init: randint, high: C}}",
    "focal": "{logits: {shape: [B, C]}, target: {shape: [B], dtype: int64, init: randint, high: C}}",
    "dice": "{logits: {shape: [B, C]}, mask: {shape: [B, C], init: bernoulli, requires_grad: false}}",
    "smooth_l1": "{pred: {shape: [B, C]}, target: {shape: [B, C], requires_grad: false}}",
    "mse": "{pred: {shape: [B, C]}, target: {shape: [B, C], requires_grad: false}}",
    "kl_div": "{logits: {shape: [B, C]}, teacher: {shape: [B, C], init: softmax, requires_grad: false}}",
    "bce_logits": "{logits: {shape: [B, C]}, target: {shape: [B, C], init: rand, requires_grad: false}}",
    "triplet": "{anchor: {shape: [B, C]}, positive: {shape: [B, C]}, negative: {shape: [B, C]}}",
    "contrastive": "{a: {shape: [B, C]}, b: {shape: [B, C]}}",
    "cosine_embedding": "{a: {shape: [B, C]}, b: {shape: [B, C]}}",
    "huber_regression": "{pred: {shape: [B, C]}, target: {shape: [B, C], requires_grad: false}}",
}
SIZES = [(8, 4), (16, 10), (32, 16), (64, 10)]


def write_suite(folder: Path, n: int) -> Path:
    """A config of `n` cases cycling through the losses and sizes; returns its path."""
    (folder / "bench_losses.py").write_text(LOSSES)
    names = list(INPUTS)
    lines = ["version: 1", "defaults: {devices: [cpu]}", "cases:"]
    for i in range(n):
        loss = names[i % len(names)]
        b, c = SIZES[(i // len(names)) % len(SIZES)]
        # `high: C` is not a dim reference: give the class count literally.
        inputs = INPUTS[loss].replace("high: C", f"high: {c}")
        lines.append(f"  - {{name: {loss}_{i:04}, loss: 'bench_losses:{loss}', dims: {{B: {b}, C: {c}}}, "
                     f"inputs: {inputs}}}")
    path = folder / f"suite_{n}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


BARE = textwrap.dedent('''
    """Time one forward+backward of each case, inputs drawn as gradaudit draws them."""
    import sys, time, json
    from pathlib import Path
    import torch
    from gradaudit.config import load_config
    from gradaudit.inputs import make_inputs, to_device
    from gradaudit.loading import add_import_roots, resolve

    torch.set_num_threads(1)
    config = load_config(sys.argv[1])
    add_import_roots(config.root, config.sys_path)
    total = 0.0
    for spec in config.cases:
        fn = resolve(spec.loss, config.root)
        inputs = to_device(make_inputs(spec.inputs, spec.seed, spec.name, 0, config.root), spec.inputs,
                           torch.device("cpu"))
        leaves = [t for t in inputs.values() if t.requires_grad]
        t0 = time.perf_counter()
        loss = fn(*inputs.values(), **spec.kwargs)
        torch.autograd.grad(loss, leaves)
        total += time.perf_counter() - t0
    print(json.dumps({"bare_s": total}))
''')


def _children(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_gradaudit(config: Path, jobs: int, out: Path) -> tuple[float, float]:
    """Wall time of `gradaudit run` and the peak RSS of its largest worker (MiB)."""
    cmd = [sys.executable, "-m", "gradaudit", "run", str(config), "-o", str(out), "-q", "--jobs", str(jobs)]
    peak: dict[int, float] = {}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def sample() -> None:
        # Workers are the children of the forkserver, itself a child of gradaudit.
        while not stop.is_set():
            if os.path.isdir("/proc"):
                servers = [p for p in _children(proc.pid) if "forkserver" in _cmdline(p)]
                for pid in (w for server in servers for w in _children(server)):
                    peak[pid] = max(peak.get(pid, 0.0), _rss_mb(pid))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"gradaudit run failed ({proc.returncode}):\n{err}")
    return wall, max(peak.values(), default=0.0)


def time_import_torch(repeats: int = 3) -> float:
    """Median wall time of `import torch` in a fresh interpreter, less the interpreter's own start."""
    def wall(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        return time.perf_counter() - t0

    base = statistics.median(wall("pass") for _ in range(repeats))
    return statistics.median(wall("import torch") for _ in range(repeats)) - base


def time_help() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gradaudit", "--help"], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()

    from gradaudit.runner import usable_cpus

    cores = usable_cpus()
    import_s = time_import_torch()
    help_s = time_help()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gradaudit-bench-") as tmp:
        folder = Path(tmp)
        for n in args.sizes:
            config = write_suite(folder, n)
            bare = subprocess.run([sys.executable, "-c", BARE, str(config)], check=True, capture_output=True,
                                  text=True)
            bare_s = float(bare.stdout.strip().splitlines()[-1].split(":")[1].strip(" }"))
            one, rss_one = run_gradaudit(config, 1, folder / f"out1_{n}")
            many, rss_many = run_gradaudit(config, cores, folder / f"outN_{n}")
            results = json.loads((folder / f"outN_{n}" / "results.json").read_text())["results"]
            audit_s = sum(r["duration_s"] for r in results)
            target = 1.2 * (bare_s / cores + import_s)
            rows.append((n, one, many, bare_s, audit_s, import_s, target, many / target, one / many,
                         many / (audit_s / cores + import_s), max(rss_one, rss_many)))
            print(f"N={n}: --jobs 1 {one:.1f}s, --jobs {cores} {many:.1f}s, bare {bare_s:.2f}s", file=sys.stderr)

    head = ["N", "--jobs 1 (s)", f"--jobs {cores} (s)", "bare fwd+bwd (s)", "audits (s)", "import torch (s)",
            "target (s)", "wall / target", "speed-up", "wall / (audits / cores + import)",
            "peak worker RSS (MiB)"]
    body = [[str(n), f"{one:.1f}", f"{many:.1f}", f"{bare:.2f}", f"{audit:.1f}", f"{imp:.2f}", f"{tgt:.1f}",
             f"{ratio:.1f}x", f"{speed:.2f}x", f"{pool:.2f}x", f"{rss:.0f}"]
            for n, one, many, bare, audit, imp, tgt, ratio, speed, pool, rss in rows]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in body:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
        print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
        for row in body:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print(f"\n{cores} usable cores; target = 1.2 x (bare / cores + one torch import); "
          f"`gradaudit --help` took {help_s:.2f}s (target < 0.3 s)")


if __name__ == "__main__":
    main()
