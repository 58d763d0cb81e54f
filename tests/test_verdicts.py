"""Zero-pattern verdicts through `gradaudit.audit`: no false alarm on correct sparse losses over 300
seeds and on 0.5M-4M-element inputs; every broken twin (a detached column, block of rows or channel)
fails on every seed, located at the detach. The losses are in tests/losses/verdicts.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from gradaudit.api import Spec, audit
from tests.losses import verdicts as V

SEEDS = range(300)
ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path(V.__file__)
CULPRIT = {m.group(1): i for i, line in enumerate(SOURCE.read_text().splitlines(), 1)
           if (m := re.search(r"# CULPRIT: (\w+)", line))}
SMALL = V.cases(8)
TWINS = [(name, twin) for name, (_, _, twins) in SMALL.items() for twin in twins]


def result_of(loss, inputs, seed):
    return audit(loss, inputs, name=loss.__name__, seed=seed, devices=["cpu"], root=ROOT).results[0]


def at_culprit(result, twin: str) -> bool:
    line = CULPRIT[twin.rsplit("_", 1)[1]]
    return any(f.location is not None and f.location.file.endswith("losses/verdicts.py")
               and f.location.line == line for f in result.findings if f.severity == "fail")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALL))
def test_correct_sparse_loss_gives_no_finding_on_any_seed(name):
    loss, inputs, _ = SMALL[name]
    results = {seed: result_of(loss, inputs, seed) for seed in SEEDS}
    flagged = {seed: r.summary_line for seed, r in results.items() if r.findings}
    assert flagged == {}
    # The test had zeros to judge: some seeds drew beyond the two default draws.
    assert max(r.draws for r in results.values()) > 2


@pytest.mark.slow
@pytest.mark.parametrize("name, twin", TWINS)
def test_broken_twin_fails_on_every_seed(name, twin):
    _, inputs, _ = SMALL[name]
    loss = getattr(V, twin)
    missed = []
    for seed in SEEDS:
        r = result_of(loss, inputs, seed)
        ids = [f.id for f in r.findings]
        if r.status != "fail" or "partial-grad" not in ids:
            missed.append((seed, r.status, ids))
        elif seed < 20 and not at_culprit(r, twin):  # located: the tracer's share, checked on a few
            missed.append((seed, "not located", [f.location for f in r.findings]))
    assert missed == []


# -- large inputs: zeros that move with the data, and a cut slice among them -------------------
BIG = {  # name: batch giving 0.5M-4M elements in the first input
    "hinge": 524_288,  # 2M scores
    "relu_sq": 524_288,  # 2048x1024 elements as [524288, 4]
    "box_clamps": 131_072,  # 524,288 box coordinates
    "ohem": 262_144,  # top-k of 2M logits
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BIG))
def test_correct_loss_on_a_large_input_passes(name):
    loss, inputs, _ = V.cases(BIG[name])[name]
    result = result_of(loss, inputs, 0)
    assert result.status == "pass", result.summary_line


@pytest.mark.slow
@pytest.mark.parametrize("twin, batch", [("relu_sq_column", 524_288), ("box_clamps_rows", 131_072),
                                         ("relu_sq_rows", 524_288)])
def test_cut_slice_of_a_large_input_fails_at_the_detach(twin, batch):
    base = next(v for v in V.cases(batch).values() if twin in v[2])
    result = result_of(getattr(V, twin), base[1], 0)
    partial = next(f for f in result.findings if f.id == "partial-grad")
    assert at_culprit(result, twin), result.findings
    kind = twin.rsplit("_", 1)[1]
    if kind == "column":
        assert partial.message.startswith("column 3 of "), partial.message
        assert result.draws <= 8  # structure confirms in a few draws (it took 39 before)
    else:
        assert partial.message.startswith(f"rows 0-{batch // 8 - 1} of "), partial.message


# -- a pattern that follows a fixed input --------------------------------------------------------
def test_a_pattern_that_follows_fixed_labels_says_so():
    target = torch.tensor([1, 0, 2, 3, 0, 1, 2, 3])  # a real tensor: the same in every draw
    result = audit(V.ce_ignore, {"logits": Spec(shape=(8, 4)), "target": target}, devices=["cpu"],
                   root=ROOT).results[0]
    partial = next(f for f in result.findings if f.id == "partial-grad")
    assert partial.message.startswith("rows 1, 4 of logits [8, 4] never receive a gradient"), partial.message
    assert "`target` is the same in every draw" in partial.message
    assert "follows its values" in partial.message


def test_random_labels_with_ignored_rows_pass():
    result = audit(V.ce_ignore, {"logits": Spec(shape=(8, 4)),
                                 "target": Spec(shape=(8,), dtype="int64", init="randint", high=4)},
                   devices=["cpu"], root=ROOT).results[0]
    assert result.status == "pass" and not result.findings, result.summary_line


def test_every_input_fixed_confirms_at_once():
    x = torch.tensor([[1.0, -1.0], [2.0, -3.0]], requires_grad=True)
    result = audit(V.relu_sq, {"x": x}, devices=["cpu"], root=ROOT).results[0]
    partial = next(f for f in result.findings if f.id == "partial-grad")
    assert result.draws == 2  # every draw is the same: more draws would add nothing
    assert partial.message.startswith("column 1 of x [2, 2]"), partial.message
    assert "`x` is the same in every draw" in partial.message
