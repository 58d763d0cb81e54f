"""The seed sample's failing cases point at the right line of seed_losses.py (issue 3's "Done when")."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, by_case, check_contract

SAMPLES = REPO / "sample_configs"
SEED_SOURCE = (SAMPLES / "seed_losses.py").read_text(encoding="utf-8").splitlines()


def line_of(fragment: str, function: str) -> int:
    """The 1-based line of `fragment` inside `function` of seed_losses.py (found, never hard-coded)."""
    start = next(i for i, text in enumerate(SEED_SOURCE) if text.startswith(f"def {function}("))
    for i in range(start + 1, len(SEED_SOURCE)):
        if SEED_SOURCE[i].startswith("def "):
            break
        if fragment in SEED_SOURCE[i] and not SEED_SOURCE[i].lstrip().startswith("#"):
            return i + 1
    raise AssertionError(f"{fragment!r} is not in {function}")


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    from typer.testing import CliRunner

    from gradaudit.cli import app

    out = tmp_path_factory.mktemp("seed_cause")
    result = CliRunner().invoke(app, ["run", str(SAMPLES / "seed_examples.yaml"), "-o", str(out),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    check_contract(out / "results.json")
    return result.output, by_case(json.loads((out / "results.json").read_text()))


def test_detach_is_the_culprit_of_example_1(seed):
    output, cases = seed
    r = cases["example_1_detached_ratio"]
    line = line_of(".detach()", "custom_loss_example_1")
    first = r["findings"][0]
    assert (first["id"], first["severity"]) == ("graph-break", "fail")
    assert first["location"] == {**first["location"], "file": "seed_losses.py", "line": line}
    assert first["detail"]["op"] == "Tensor.detach" and first["detail"]["inputs"] == ["predictions"]
    assert "column 1 of `predictions`" in first["message"]
    # The verdict it explains points at the same line, and the one-line summary names it.
    partial = next(f for f in r["findings"] if f["id"] == "partial-grad")
    assert partial["location"]["line"] == line
    assert f"seed_losses.py:{line}" in r["summary_line"]
    assert "component_b.detach()" in r["summary_line"]
    assert f"seed_losses.py:{line}" in output


def test_the_fixed_twins_have_no_graph_break(seed):
    _, cases = seed
    for name in ("example_1_fixed", "example_2_fixed", "example_3_fixed"):
        assert cases[name]["status"] == "pass"
        assert not [f for f in cases[name]["findings"] if f["id"] == "graph-break"], name


def test_example_2_fails_in_forward_and_notes_the_argmax(seed):
    _, cases = seed
    r = cases["example_2_argmax_loop"]
    error = r["findings"][0]
    assert error["id"] == "loss-error"
    assert error["location"]["line"] == line_of("torch.mean(torch.tensor(", "custom_loss_example_2")
    argmax = next(f for f in r["findings"] if f["id"] == "graph-break")
    assert argmax["severity"] == "info"  # the forward error, not the argmax, is what fails this case
    assert argmax["location"]["line"] == line_of("torch.argmax(", "custom_loss_example_2")
    assert argmax["detail"]["kind"] == "index"


def test_sigmoid_inplace_names_both_ends(seed):
    _, cases = seed
    r = cases["sigmoid_inplace"]
    conflict = r["findings"][0]
    assert conflict["id"] == "inplace-version-conflict"
    saved = line_of("torch.sigmoid(", "sigmoid_inplace_conflict")
    changed = line_of(".mul_(", "sigmoid_inplace_conflict")
    assert conflict["detail"]["saved_by"]["location"]["line"] == saved
    assert conflict["detail"]["modified_by"]["location"]["line"] == changed
    assert conflict["location"]["line"] == changed and conflict["second"]["line"] == saved
    assert conflict["detail"]["modified_by"]["op"] == "Tensor.mul_"
    assert (conflict["detail"]["version_saved"], conflict["detail"]["version_now"]) == (0, 1)
    assert f"seed_losses.py:{saved}" in conflict["message"]
    assert f"seed_losses.py:{changed}" in conflict["message"]
    assert f"seed_losses.py:{changed}" in r["summary_line"]


def test_clone_then_mul_is_an_info_only(seed):
    _, cases = seed
    r = cases["example_3_clone_mul_"]
    assert r["status"] == "pass"
    info = [f for f in r["findings"] if f["id"] == "inplace-on-graph-tensor"]
    assert [f["location"]["line"] for f in info] == [line_of(".mul_(", "custom_loss_example_3")]
    assert all(f["severity"] == "info" for f in r["findings"])
