"""The audit's cost in instructions: a measure that a shared machine's drifting speed leaves alone.

    python benchmarks/bench_instructions.py            # needs valgrind (Debian: apt-get install valgrind)
    python benchmarks/bench_instructions.py --quick    # fewer draws and cases

Wall-clock ratios on a shared VM move by a third within minutes (see docs/benchmarks.md), which
leaves a 1.2x or 1.5x target undecided for days. This benchmark counts the user-space instructions
each piece of work executes, under valgrind's callgrind with collection off except around the
measured loops: the same count on any load, run after run. For each loss of `bench_overhead.py`
it prints the instructions of one bare forward+backward (ready inputs), of one untraced audit draw
(the spine: seeding, non-leaf inputs, gradient bookkeeping) and of one audited (traced) draw, and
for a set of the small cases of `bench_suite.py`, one whole in-process audit (`audit_job`, 2 draws)
against the same bare work (draw the inputs, forward, backward; twice).

Instructions are not time: torch's vectorised kernels run several an instruction cycle, the
tracer's Python far fewer, and memory traffic costs no instruction. So a ratio here is a floor
under the wall ratio, and a change that moves it is a change in work done, never noise. The
targets are on the wall ratios (`bench_perf.py`); this says what the audit itself adds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Runs under valgrind: set up, then count each phase with collection switched on around it only.
# Each phase is counted twice, with `n` and with 0 iterations, and the second subtracted (the
# switching itself, a fork of callgrind_control, is counted too).
PHASES = textwrap.dedent('''
    import json, os, subprocess, sys
    sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
    import torch
    torch.set_num_threads(1)

    def control(*flags):
        subprocess.run(["callgrind_control", *flags, str(os.getpid())], check=True, capture_output=True)

    def counted(fn, n):
        """Instructions of `n` calls of fn, less those of switching collection on and off."""
        totals = []
        for reps in (n, 0):
            control("--zero")
            control("--instr=on")
            for _ in range(reps):
                fn()
            control("--instr=off")
            control("--dump")
            totals.append(latest_total())
        return (totals[0] - totals[1]) / n

    def latest_total():
        folder = os.environ["GA_CALLGRIND_DIR"]
        # callgrind.out.PID.N: the N-th dump of this process; the latest is the phase just counted.
        dumps = sorted((os.path.join(folder, f) for f in os.listdir(folder) if f.count(".") == 3),
                       key=lambda f: int(f.rsplit(".", 1)[1]))
        for line in open(dumps[-1]):
            if line.startswith("totals:"):  # this dump's count ("summary:" is not it after a zero)
                return int(line.split()[1])
        raise SystemExit("no totals in " + dumps[-1])

    mode, n = sys.argv[3], int(sys.argv[4])
    out = {}
    if mode == "draws":
        from pathlib import Path
        import bench_overhead as bo
        from gradaudit.api import prepare
        from gradaudit.devices import current
        from gradaudit.draws import DrawLoop
        from gradaudit.losscall import load_loss
        from gradaudit.tracing import default_observers
        for name in sys.argv[5:]:
            loss, inputs = bo.LOSSES[name]
            spec = prepare(loss, inputs, devices=["cpu"])[0]
            loops = {}
            for kind, observers in (("spine", []), ("audited", default_observers())):
                call = load_loss(spec, "cpu", Path.cwd(), current())
                ready = call.inputs(0)
                call.inputs = lambda draw, ready=ready: ready
                loops[kind] = (DrawLoop(call, spec, observers, keep_first=False), ready)
            ready = loops["spine"][1]
            tensors = {k: ready.leaves.get(k, t) for k, t in ready.received.items()}
            leaves = [t for t in tensors.values() if t.requires_grad]

            def bare():
                for leaf in leaves:
                    leaf.grad = None
                loss(*tensors.values()).backward()

            row = {}
            def draw_zero(loop):
                def run():  # draw 0 of a fresh case each time (bench_overhead.fresh_case)
                    bo.fresh_case(loop)
                    loop.one(0)
                return run

            for kind, fn in (("bare", bare), ("spine", draw_zero(loops["spine"][0])),
                             ("audited", draw_zero(loops["audited"][0]))):
                loop = loops.get(kind, loops["spine"])[0]
                with loop.call.holding():
                    for _ in range(3):
                        fn()
                    row[kind] = counted(fn, n)
            out[name] = row
    else:
        from gradaudit.config import load_config
        from gradaudit.inputs import make_inputs, to_device
        from gradaudit.jobs import audit_context
        from gradaudit.loading import add_import_roots, resolve
        from gradaudit.losscall import reseed_between_cases
        from gradaudit.runner import RunOptions, select_jobs
        from gradaudit.workers import audit_job
        config = load_config(sys.argv[5])
        jobs = select_jobs(config, RunOptions())
        add_import_roots(config.root, config.sys_path)
        ctx = audit_context(config.root, config.display_path)
        reseed_between_cases()
        fns = [resolve(j.spec.loss, config.root) for j in jobs]
        state = {"i": 0}

        def audited():
            j = jobs[state["i"] % len(jobs)]
            state["i"] += 1
            audit_job(j.spec, j.device, ctx)

        def bare():
            i = state["i"] % len(jobs)
            state["i"] += 1
            spec, fn = jobs[i].spec, fns[i]
            for draw in range(2):
                inputs = to_device(make_inputs(spec.inputs, spec.seed, spec.name, draw, config.root),
                                   spec.inputs, torch.device("cpu"))
                fn(*inputs.values(), **spec.kwargs).backward()

        for kind, fn in (("bare", bare), ("audited", audited)):
            for _ in range(len(jobs)):  # every case once first: imports, caches
                fn()
            state["i"] = 0
            out[kind] = counted(fn, len(jobs) * n)
    print("RESULT " + json.dumps(out))
''')


def under_callgrind(args: list[str], folder: Path) -> subprocess.Popen:
    """Start PHASES under callgrind (collection off at start); `result` reads what it printed."""
    env = {**os.environ, "GA_CALLGRIND_DIR": str(folder)}
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
           f"--callgrind-out-file={folder}/callgrind.out.%p", sys.executable, "-c", PHASES,
           str(HERE.parent), str(HERE), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=folder)


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    raise SystemExit(f"the callgrind run failed ({proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer draws and cases (a smoke run)")
    parser.add_argument("--draws", type=int, default=None, help="counted draws of each kind (default 20)")
    parser.add_argument("--cases", type=int, default=None, help="small cases audited (default 48)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench_instructions needs valgrind (with callgrind_control) on the PATH")
    draws = args.draws or (4 if args.quick else 20)
    cases = args.cases or (12 if args.quick else 48)
    sys.path.insert(0, str(HERE))
    import bench_overhead
    import bench_suite
    import torch

    with tempfile.TemporaryDirectory(prefix="ga-instr-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "draws").mkdir()
        suite_dir = tmp_path / "suite"
        suite_dir.mkdir()
        config = bench_suite.write_suite(suite_dir, cases)
        # Two processes side by side (each pays one `import torch` under valgrind, about a minute).
        draws_run = under_callgrind(["draws", str(draws), *bench_overhead.LOSSES], tmp_path / "draws")
        suite_run = under_callgrind(["suite", "1", str(config)], suite_dir)
        rows, small = result(draws_run), result(suite_run)
    print(f"torch {torch.__version__}, Python {sys.version.split()[0]}; user-space instructions under "
          f"callgrind, {draws} draws of each kind (the small cases: {cases} cases, each once)")
    print()
    print("| loss | bare fwd+bwd | spine draw | audited draw | spine / bare | audited / bare |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['bare'] / 1e6:.2f} M | {row['spine'] / 1e6:.2f} M | {row['audited'] / 1e6:.2f} M | "
              f"{row['spine'] / row['bare']:.2f}x | {row['audited'] / row['bare']:.2f}x |")
    print(f"| {cases} small cases (bench_suite), a whole audit_job vs 2 bare draws | {small['bare'] / 1e6:.2f} M "
          f"| - | {small['audited'] / 1e6:.2f} M | - | {small['audited'] / small['bare']:.2f}x |")


if __name__ == "__main__":
    main()
