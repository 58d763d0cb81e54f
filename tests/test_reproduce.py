"""The `reproduce` line of a Python-API result is runnable: pasted, it audits the same case again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from gradaudit.api import Spec, audit
from tests.conftest import LOSSES, REPO


def _verdicts(run) -> list:
    return [(r.case, r.device, r.status, [f.id for f in r.findings], [i.grad for i in r.inputs]) for r in run.results]


@pytest.mark.slow
def test_an_importable_loss_reproduces_in_a_fresh_python(tmp_path):
    sys.path.insert(0, str(LOSSES))
    try:
        run = audit("spine:first_column", {"x": Spec(shape=("B", 3), init="uniform", low=0.5, high=2.0)},
                              devices=["cpu"], dims={"B": [2, 4]}, seed=7, expect={"ignore": ["graph-break"]})
    finally:
        sys.path.remove(str(LOSSES))
    assert [r.status for r in run.results] == ["fail", "fail"]
    for result in run.results:
        line = result.reproduce
        assert line.startswith("from gradaudit import Spec, audit; audit('spine:first_column', "
                               "inputs={'x': Spec(")
        assert "inputs=..." not in line and "seed=7" in line
        script = (line.replace("; audit(", "; _ = audit(", 1) + "\nimport json, sys\n"
                  "json.dump([(r.case, r.device, r.status, [f.id for f in r.findings], [i.grad for i in r.inputs]) "
                  "for r in _.results], sys.stdout)\n")
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{LOSSES}"}
        proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        again = json.loads(proc.stdout)
        # The pasted line audits this one matrix entry, with the same verdict.
        assert [tuple(map(lambda v: v if not isinstance(v, list) else list(v), row)) for row in again] == \
            [tuple(row) for row in _verdicts(type(run)(results=[result]))]


def ratio_loss(predictions, targets):
    ratio = predictions[:, 0] / predictions[:, 1].detach()
    return ((ratio - targets) ** 2).mean()


def test_a_local_function_and_a_tensor_input_reproduce_where_they_live():
    """A loss in `__main__` (a notebook) is named bare; small tensors are written out."""
    targets = torch.linspace(0, 1, 8)
    inputs = {"predictions": Spec(shape=(8, 2), init="uniform", low=0.5, high=2.0), "targets": targets}
    run = audit(ratio_loss, inputs, devices=["cpu"], expect={"no_grad": ["targets"]})
    line = run.results[0].reproduce
    assert line.startswith("import torch; from gradaudit import Spec, audit; "
                           "audit('tests.test_reproduce:ratio_loss'")
    assert "torch.tensor([0.0, 0.14" in line and "dtype=torch.float32" in line
    namespace: dict = {}
    exec(line.replace("; audit(", "; _ = audit(", 1), namespace)  # noqa: S102
    assert _verdicts(namespace["_"]) == _verdicts(run) and run.results[0].status == "fail"
    # The same function defined in __main__ is named bare: the line runs where it was defined.
    main_ns = {"__name__": "__main__"}
    exec("def ratio_loss(predictions, targets):\n    return (predictions[:, 0] / predictions[:, 1].detach()).mean()\n",
         main_ns)  # noqa: S102
    main_loss = main_ns["ratio_loss"]
    main_loss.__module__ = "__main__"
    run = audit(main_loss, {"predictions": Spec(shape=(4, 2))}, devices=["cpu"])
    assert "; audit(ratio_loss, inputs=" in run.results[0].reproduce
