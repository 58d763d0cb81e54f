"""Config loading: every key checked, errors that name file, line, column and key, matrices."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gradaudit.config import load_config
from gradaudit.errors import ConfigError
from tests.conftest import LOSSES, REPO


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, display_path="c.yaml")


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return info.value.problems


GOOD_CASE = """\
  - name: ok
    loss: torch.nn.functional:mse_loss
    inputs:
      a: {shape: [2]}
      b: {shape: [2]}
"""


@pytest.mark.parametrize("text, expected", [
    ("version: 1\ndefaults:\n  repets: 3\ncases:\n" + GOOD_CASE,
     "c.yaml:3:3: defaults.repets: unknown key 'repets' (did you mean 'repeats'?)"),
    ("version: 1\ncases:\n" + GOOD_CASE + "    kwrags: {}\n",
     "c.yaml:8:5: cases[0].kwrags: unknown key 'kwrags' (did you mean 'kwargs'?)"),
    ("version: 1\ncases:\n" + GOOD_CASE.replace("a: {shape: [2]}", "a: {shape: [B]}"),
     "c.yaml:6:19: cases[0].inputs.a.shape[0]: dim 'B' is not defined in dims"),
    ("version: 1\ncases:\n" + GOOD_CASE.replace("a: {shape: [2]}", "a: {shape: [2], dtype: flaot32}"),
     "c.yaml:6:23: cases[0].inputs.a.dtype: unknown dtype 'flaot32' (did you mean 'float32'?)"),
    ("version: 1\ncases:\n" + GOOD_CASE.replace("a: {shape: [2]}", "a: {shape: [2], init: rnadn}"),
     "c.yaml:6:23: cases[0].inputs.a.init: unknown init 'rnadn' (did you mean 'randn'?)"),
    ("version: 1\ncases:\n" + GOOD_CASE + GOOD_CASE,
     "c.yaml:8:5: cases[1].name: duplicate case name 'ok' (first at case 0)"),
    ("version: 1\ncases:\n" + GOOD_CASE.replace("    loss: torch.nn.functional:mse_loss\n", ""),
     "c.yaml:3:5: cases[0]: missing required key 'loss'"),
    ("version: 2\ncases:\n" + GOOD_CASE,
     "c.yaml:1:1: version: unsupported version 2: this gradaudit reads version 1"),
    ("cases:\n" + GOOD_CASE, "c.yaml:1:1: (top): missing required key 'version'"),
    ("version: 1\ncases:\n" + GOOD_CASE.replace("a: {shape: [2]}", "a: {shape: [2], init: randint}"),
     "c.yaml:6:7: cases[0].inputs.a: init 'randint' needs parameter 'high'"),
    ("version: 1\ncases:\n" + GOOD_CASE.replace("a: {shape: [2]}", "a: {shape: [2], hihg: 3, init: randint}"),
     "c.yaml:6:23: cases[0].inputs.a.hihg: unknown key 'hihg' (did you mean 'high'?)"),
    ("version: 1\ncases:\n" + GOOD_CASE + "    devices: [gpu]\n",
     "c.yaml:8:15: cases[0].devices[0]: unknown device 'gpu' (did you mean 'cuda'?): use cpu, cuda, cuda:N or mps"),
    ("version: 1\ncases:\n" + GOOD_CASE + "    expect: {ignore: [partial-grads]}\n",
     "cases[0].expect.ignore[0]: unknown finding ID 'partial-grads' (did you mean 'partial-grad'?)"),
    ("version: 1\ncases:\n" + GOOD_CASE + "    expect: {no_grad: [c]}\n",
     "cases[0].expect.no_grad[0]: no input named 'c'"),
    ("version: 1\ncases:\n" + GOOD_CASE.replace("name: ok", "name: 'bad name'"),
     "c.yaml:3:5: cases[0].name: case name 'bad name' must match [A-Za-z0-9_.-]+"),
    ("version: 1\ncases:\n" + GOOD_CASE + "    repeats: two\n",
     "c.yaml:8:5: cases[0].repeats: must be an integer, got 'two'"),
    ("version: 1\ncases: [\n", "c.yaml:3:1: (yaml): not valid YAML"),
    ("version: 1\ncases:\n" + GOOD_CASE.replace("a: {shape: [2]}", "a: {shape: [2], leaf: 3}"),
     "c.yaml:6:23: cases[0].inputs.a.leaf: must be true or false, got 3"),
])
def test_config_error_names_file_line_and_key(tmp_path, text, expected):
    problems = _problems(tmp_path, text)
    assert any(expected in p for p in problems), problems


def test_all_problems_reported_at_once(tmp_path):
    text = "version: 1\ndefaults: {repets: 1}\ncases:\n" + GOOD_CASE.replace("[2]}", "[2], dtyp: x}")
    assert len(_problems(tmp_path, text)) == 3


def test_config_error_exits_2_and_runs_nothing(tmp_path, cli_invoke):
    path = tmp_path / "c.yaml"
    path.write_text("version: 1\ncases:\n" + GOOD_CASE.replace("a: {shape: [2]}", "a: {shape: [Q]}"))
    out = tmp_path / "out"
    result = cli_invoke(["run", path, "-o", out], exit_code=2)
    assert "dim 'Q' is not defined" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_defaults_apply_and_cases_override(tmp_path):
    config = _load(tmp_path, """\
        version: 1
        defaults: {devices: [cpu], repeats: 3, dims: {B: 4, C: 2}, kwargs: {reduction: sum}}
        cases:
          - name: a
            loss: torch.nn.functional:mse_loss
            dims: {C: 5}
            kwargs: {weight: null}
            inputs:
              x: {shape: [B, C]}
              t: {shape: [B, C], requires_grad: false}
              k: {shape: [B], dtype: int64, init: randint, high: 5}
    """)
    (case,) = config.cases
    assert case.repeats == 3 and case.devices == ["cpu"]
    assert case.kwargs == {"reduction": "sum", "weight": None}
    assert [i.shape for i in case.inputs] == [[4, 5], [4, 5], [4]]
    assert [i.requires_grad for i in case.inputs] == [True, False, False]
    assert [i.init for i in case.inputs] == ["randn", "randn", "randint"]


def test_dims_list_makes_a_matrix(tmp_path):
    config = _load(tmp_path, """\
        version: 1
        cases:
          - name: m
            loss: torch.nn.functional:mse_loss
            dims: {B: [1, 8], C: [2, 3], D: 7}
            inputs:
              x: {shape: [B, C, D]}
              t: {shape: [B, C, D]}
    """)
    assert [c.name for c in config.cases] == ["m[B=1,C=2]", "m[B=1,C=3]", "m[B=8,C=2]", "m[B=8,C=3]"]
    assert config.cases[3].inputs[0].shape == [8, 3, 7]
    assert {c.base_name for c in config.cases} == {"m"}


def test_sys_path_must_exist(tmp_path):
    problems = _problems(tmp_path, "version: 1\nsys_path: [nowhere]\ncases:\n" + GOOD_CASE)
    assert any("c.yaml:2:12: sys_path[0]: folder 'nowhere' does not exist" in p for p in problems)


def test_readme_config_table_is_up_to_date():
    from gradaudit.schema import update_readme

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert update_readme(readme) == readme, "run: python -m gradaudit.schema"


def test_validate_accepts_a_good_config_and_names_broken_losses(tmp_path, cli_invoke):
    good = tmp_path / "good.yaml"
    good.write_text(f"version: 1\nsys_path: [{LOSSES}]\ncases:\n" + GOOD_CASE.replace(
        "torch.nn.functional:mse_loss", "spine:unused_input"))
    result = cli_invoke(["validate", good])
    assert "ok (1 case" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"version: 1\nsys_path: [{LOSSES}]\ncases:\n"
                   + GOOD_CASE.replace("torch.nn.functional:mse_loss", "spine:missing_function")
                   + GOOD_CASE.replace("name: ok", "name: arity").replace(
                       "torch.nn.functional:mse_loss", "spine:raises"))
    result = cli_invoke(["validate", bad], exit_code=1)
    assert "bad.yaml:5:11: cases[0].loss: cannot import 'spine:missing_function': 'spine' has no attribute " \
        "'missing_function'" in result.output
    assert "bad.yaml:10:11: cases[1].loss: spine:raises cannot take inputs (a, b)" in result.output


@pytest.mark.slow
def test_init_writes_a_config_that_validates(tmp_path, cli_invoke):
    path = tmp_path / "starter.yaml"
    cli_invoke(["init", path])
    assert path.read_text().startswith("# gradaudit config")
    cli_invoke(["validate", path])
    cli_invoke(["init", path], exit_code=2)  # refuses to overwrite
    out = tmp_path / "out"
    cli_invoke(["run", path, "-o", out, "--device", "cpu"])
    assert (out / "results.json").exists()
