"""torch.compile parity: the `compile` key and `--compile`, and each compile finding beside its twin.

The losses and the deliberately broken backends are in tests/losses/compile_faults.py. Most
entries use `aot_eager` (about a second each); Inductor runs in the tests marked slow.
"""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET

import pytest

from gradaudit.config import load_config
from gradaudit.errors import ConfigError
from gradaudit.model import RunResults
from gradaudit.runner import RunOptions, select_jobs
from tests.conftest import LOSSES, REPO, by_case, finding_ids, run_gradaudit

FAULTS = LOSSES / "compile_faults.py"
PAIR = "{pred: {shape: [8, 4]}, target: {shape: [8, 4], requires_grad: false}}"


def _line(text: str) -> int:
    return next(i for i, line in enumerate(FAULTS.read_text().splitlines(), 1) if text in line)


def _write(tmp_path, body: str):
    path = tmp_path / "config.yaml"
    path.write_text(f"version: 1\nsys_path: [{LOSSES}]\ndefaults: {{devices: [cpu]}}\ncases:\n"
                    + textwrap.dedent(body))
    return path


# -- the key and the option (no torch) ---------------------------------------------------------

def test_compile_key_adds_entries_on_the_eager_entry_draws(tmp_path):
    cfg = load_config(_write(tmp_path, f"""\
        - name: mse
          loss: compile_faults:squared_error
          dims: {{B: [2, 8]}}
          compile: [aot_eager, inductor]
          inputs: {{pred: {{shape: [B, 4]}}, target: {{shape: [B, 4], requires_grad: false}}}}
        - name: plain
          loss: compile_faults:squared_error
          compile: true
          inputs: {PAIR}
        """))
    names = [s.name for s in cfg.cases]
    assert names == ["mse[B=2]", "mse[B=2,compile=aot_eager]", "mse[B=2,compile=inductor]",
                     "mse[B=8]", "mse[B=8,compile=aot_eager]", "mse[B=8,compile=inductor]",
                     "plain", "plain[compile=inductor]"]
    by_name = {s.name: s for s in cfg.cases}
    assert by_name["mse[B=8,compile=inductor]"].compile == "inductor"
    assert by_name["mse[B=8]"].compile is None
    # Same draws: the compiled entries seed their inputs with the eager entry's name.
    assert by_name["mse[B=8,compile=aot_eager]"].draw_name == by_name["mse[B=8]"].draw_name == "mse[B=8]"
    assert by_name["plain[compile=inductor]"].draw_name == "plain"
    assert by_name["mse[B=2,compile=inductor]"].inputs[0].shape == [2, 4]


def test_compile_rides_with_the_precision_matrix(tmp_path):
    cfg = load_config(_write(tmp_path, f"""\
        - name: mse
          loss: compile_faults:squared_error
          dtypes: [float32, bfloat16]
          compile: [aot_eager]
          inputs: {PAIR}
        """))
    by_name = {s.name: s for s in cfg.cases}
    assert list(by_name) == ["mse[dtype=float32]", "mse[dtype=float32,compile=aot_eager]",
                             "mse[dtype=bfloat16]", "mse[dtype=bfloat16,compile=aot_eager]"]
    compiled = by_name["mse[dtype=bfloat16,compile=aot_eager]"]
    assert compiled.dtype == "bfloat16" and compiled.inputs[0].dtype == "bfloat16"
    assert compiled.draw_name == by_name["mse[dtype=bfloat16]"].draw_name == "mse"


@pytest.mark.parametrize("value, message", [
    ("inductor", "compile must be true, false or a list of torch.compile backends"),
    ("[]", "compile is empty"),
    ("[aot_eager, aot_eager]", "backend 'aot_eager' is listed twice"),
    ("['not a name']", "backend 'not a name' must be a torch.compile backend name"),
    ("[3]", "backend 3 must be a torch.compile backend name"),
])
def test_bad_compile_values_name_file_line_and_key(tmp_path, value, message):
    path = _write(tmp_path, f"""\
        - name: mse
          loss: compile_faults:squared_error
          compile: {value}
          inputs: {PAIR}
        """)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert message in text, text
    assert f"{path}:7:" in text and "cases[0].compile" in text, text


def test_a_dim_named_compile_clashes(tmp_path):
    path = _write(tmp_path, f"""\
        - name: mse
          loss: compile_faults:squared_error
          dims: {{compile: [1, 2]}}
          compile: [aot_eager]
          inputs: {PAIR}
        """)
    with pytest.raises(ConfigError, match="dim 'compile' clashes with the compile matrix's 'compile' axis"):
        load_config(path)


def test_compile_option_replaces_the_config_lists(tmp_path):
    cfg = load_config(_write(tmp_path, f"""\
        - name: mse
          loss: compile_faults:squared_error
          compile: [zero_backward]
          inputs: {PAIR}
        - name: other
          loss: compile_faults:soft_ce
          inputs: {PAIR}
        """))
    assert [s.name for s in cfg.cases] == ["mse", "mse[compile=zero_backward]", "other"]
    jobs = select_jobs(cfg, RunOptions(compile=["aot_eager", "inductor"]))
    assert [j.spec.name for j in jobs] == ["mse", "mse[compile=aot_eager]", "mse[compile=inductor]",
                                           "other", "other[compile=aot_eager]", "other[compile=inductor]"]
    assert [j.spec.name for j in select_jobs(cfg, RunOptions(compile=["aot_eager"],
                                                             case_globs=["other*"]))] == [
        "other", "other[compile=aot_eager]"]
    assert [j.spec.name for j in select_jobs(cfg, RunOptions())] == ["mse", "mse[compile=zero_backward]",
                                                                    "other"]


def test_compile_option_rejects_what_is_no_backend_name(tmp_path, cli_invoke):
    path = _write(tmp_path, f"""\
        - name: mse
          loss: compile_faults:squared_error
          inputs: {PAIR}
        """)
    result = cli_invoke(["run", path, "-o", tmp_path / "out", "--compile", "in ductor"], exit_code=2)
    assert "--compile 'in ductor': not a torch.compile backend name" in result.output
    assert not (tmp_path / "out").exists()


# -- the audit of compiled entries (aot_eager and the broken backends) ------------------------

CASES = f"""\
- name: mse
  loss: compile_faults:squared_error
  compile: [aot_eager, zero_backward]
  inputs: {PAIR}
- name: scaled
  loss: compile_faults:Scaled
  compile: [zero_backward]
  inputs: {PAIR}
- name: hinge_relu
  loss: compile_faults:relu_hinge
  compile: [explodes_on_relu, backward_raises, aot_eagr]
  inputs: {PAIR}
- name: hinge_clamp
  loss: compile_faults:hinge_twin
  compile: [explodes_on_relu]
  inputs: {PAIR}
- name: raises
  loss: compile_faults:raises
  compile: [aot_eager]
  inputs: {PAIR}
- name: item
  loss: compile_faults:item_normalised
  compile: [aot_eager]
  inputs: {PAIR}
- name: dropout
  loss: compile_faults:dropout_mse
  compile: [aot_eager, zero_backward, aot_eager_decomp_partition]
  inputs: {PAIR}
- name: detached
  loss: compile_faults:detached_ratio
  compile: [aot_eager]
  inputs: {{pred: {{shape: [8, 2]}}, target: {{shape: [8], requires_grad: false}}}}
- name: inplace
  loss: spine:sigmoid_then_inplace
  compile: [aot_eager]
  inputs: {{x: {{shape: [4, 3]}}}}
- name: sqrt_at_zero
  loss: spine:sqrt_at_zero
  compile: [aot_eager]
  inputs: {{x: {{shape: [4, 3]}}}}
"""


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory):
    """One run of every case above through the CLI (worker processes), with every report."""
    from typer.testing import CliRunner

    from gradaudit.cli import app

    folder = tmp_path_factory.mktemp("compiled")
    config = _write(folder, CASES)
    out = folder / "out"
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(out), "--junit", str(out / "junit.xml"),
                                      "--markdown", str(out / "summary.md")])
    assert (out / "results.json").exists(), result.output
    doc = json.loads((out / "results.json").read_text())
    return result.exit_code, by_case(doc), out


def _finding(result: dict, finding_id: str) -> dict:
    return next(f for f in result["findings"] if f["id"] == finding_id)


@pytest.mark.slow
def test_a_correct_loss_passes_under_aot_eager(compiled_run):
    _, results, _ = compiled_run
    r = results["mse[compile=aot_eager]"]
    assert r["status"] == "pass" and r["findings"] == [], r["findings"]
    assert r["compile"]["backend"] == "aot_eager"
    assert r["compile"]["compared_draws"] == r["draws"] >= 2
    assert r["compile"]["graphs"] == 1 and r["compile"]["graph_breaks"] == []
    assert r["compile"]["compile_s"] > 0
    assert all(i["grad"] == "ok" for i in r["inputs"] if i["name"] == "pred")
    assert results["mse"]["status"] == "pass" and "compile" not in results["mse"]


def test_a_backend_with_a_zero_backward_is_a_compile_mismatch_naming_the_input(compiled_run):
    _, results, _ = compiled_run
    r = results["mse[compile=zero_backward]"]
    assert r["status"] == "fail"
    assert finding_ids(r)[0] == "compile-mismatch"
    mismatch = _finding(r, "compile-mismatch")
    assert mismatch["input"] == "pred" and mismatch["severity"] == "fail"
    detail = mismatch["detail"]
    assert detail["value"] == 0.0 and detail["reference"] != 0.0
    assert detail["max_abs_diff"] == pytest.approx(abs(detail["reference"]))
    assert detail["mismatched"] == detail["numel"] == 32 and len(detail["index"]) == 2
    assert detail["backend"] == "zero_backward" and detail["draw"] == 0
    assert "under torch.compile(backend='zero_backward') the gradient of pred differs from eager" \
        in mismatch["message"]
    assert f"(eager {detail['reference']:.6g}, compiled 0)" in mismatch["message"]
    # The loss itself is right (the forward is faithful): no mismatch on it.
    assert [f["input"] for f in r["findings"] if f["id"] == "compile-mismatch"] == ["pred"]
    # The verdicts are the compiled loss's own.
    assert "zero-grad" in finding_ids(r)


def test_a_module_loss_is_compiled_with_its_parameters(compiled_run):
    _, results, _ = compiled_run
    r = results["scaled[compile=zero_backward]"]
    assert sorted(f["input"] for f in r["findings"] if f["id"] == "compile-mismatch") == \
        ["param:weight", "pred"]
    assert results["scaled"]["status"] == "pass"


def test_a_backend_that_cannot_compile_is_a_compile_error(compiled_run):
    _, results, _ = compiled_run
    r = results["hinge_relu[compile=explodes_on_relu]"]
    assert r["status"] == "fail" and finding_ids(r) == ["compile-error"]
    error = _finding(r, "compile-error")
    assert "torch.compile(backend='explodes_on_relu') failed while compiling the loss" in error["message"]
    assert "cannot lower relu" in error["message"] and "the eager loss runs" in error["message"]
    assert error["detail"]["stage"] == "compile"
    # The line that raised: here the backend's own (a user's backend is user code).
    assert error["location"]["line"] == _line('raise RuntimeError("cannot lower relu")')
    assert results["hinge_relu"]["status"] == "pass"


def test_the_same_backend_compiles_the_twin(compiled_run):
    _, results, _ = compiled_run
    r = results["hinge_clamp[compile=explodes_on_relu]"]
    assert r["status"] == "pass" and r["findings"] == [], r["findings"]
    assert r["compile"]["compared_draws"] >= 2


def test_a_compiled_backward_that_raises_is_a_compile_error(compiled_run):
    _, results, _ = compiled_run
    r = results["hinge_relu[compile=backward_raises]"]
    assert finding_ids(r) == ["compile-error"]
    error = _finding(r, "compile-error")
    assert error["detail"]["stage"] == "backward"
    assert "the backward kernel failed" in error["message"]
    assert "backward-error" not in finding_ids(r)


def test_where_eager_raises_too_it_is_the_eager_finding(compiled_run):
    _, results, _ = compiled_run
    eager, compiled = results["raises"], results["raises[compile=aot_eager]"]
    assert finding_ids(compiled) == finding_ids(eager) == ["loss-error"]
    assert compiled["findings"][0]["message"] == eager["findings"][0]["message"]
    assert compiled["findings"][0]["location"]["line"] == _line("return pred @ target")


def test_an_unknown_backend_is_an_error_of_its_entry_with_the_registered_names(compiled_run):
    _, results, _ = compiled_run
    r = results["hinge_relu[compile=aot_eagr]"]
    assert r["status"] == "error"
    message = r["error"]["message"]
    assert "unknown torch.compile backend 'aot_eagr' (did you mean 'aot_eager'?)" in message
    # Names the loss module registered count: the broken backends of compile_faults are listed.
    assert "zero_backward" in message and "inductor" in message
    assert results["hinge_relu[compile=explodes_on_relu]"]["status"] == "fail"  # the others still ran


def test_a_graph_break_is_listed_at_the_user_line(compiled_run):
    _, results, _ = compiled_run
    r = results["item[compile=aot_eager]"]
    assert r["status"] == "pass"
    brk = _finding(r, "compile-graph-break")
    assert brk["severity"] == "info"
    assert brk["location"]["line"] == _line("denom = target.abs().sum().item()")
    assert brk["location"]["file"].endswith("compile_faults.py")
    assert "Tensor.item()" in brk["message"] and "2 graphs" in brk["message"]
    assert r["compile"]["graphs"] == 2
    assert r["compile"]["graph_breaks"][0]["where"].endswith(f"compile_faults.py:{brk['location']['line']}")


def test_a_loss_without_breaks_has_no_graph_break_finding(compiled_run):
    _, results, _ = compiled_run
    for name in ("mse[compile=aot_eager]", "hinge_clamp[compile=explodes_on_relu]"):
        assert "compile-graph-break" not in finding_ids(results[name])


def test_dropout_is_compared_where_the_backend_draws_as_eager(compiled_run):
    _, results, _ = compiled_run
    r = results["dropout[compile=aot_eager]"]
    assert r["status"] == "pass", r["findings"]
    random_ops = r["compile"]["random_ops"]
    assert random_ops[0]["op"] == "aten.bernoulli_"
    assert random_ops[0]["where"].endswith(f"compile_faults.py:{_line('F.dropout(pred, p=0.5)')}")
    assert r["compile"]["compared_draws"] == r["draws"]
    # A wrong backward under dropout is still caught: the forward draws the same masks.
    assert "compile-mismatch" in finding_ids(results["dropout[compile=zero_backward]"])


def test_dropout_under_a_backend_that_draws_otherwise_is_not_compared(compiled_run):
    _, results, _ = compiled_run
    r = results["dropout[compile=aot_eager_decomp_partition]"]
    assert r["status"] == "pass", r["findings"]
    assert "compile-mismatch" not in finding_ids(r)
    assert r["compile"]["compared_draws"] == 0
    assert "draws them differently from eager" in r["compile"]["not_compared"]
    assert any("values are not compared" in w for w in r["warnings"])


def test_explanations_come_from_the_eager_code(compiled_run):
    """The tracer sees the eager function: the compiled entry's findings are located as eager's."""
    _, results, _ = compiled_run
    eager, compiled = results["detached"], results["detached[compile=aot_eager]"]
    assert finding_ids(compiled) == finding_ids(eager) == ["graph-break", "partial-grad"]
    for e, c in zip(eager["findings"], compiled["findings"], strict=True):
        assert c["message"] == e["message"] and c["location"] == e["location"]
    assert compiled["findings"][0]["location"]["line"] == _line("b = pred[:, 1].detach()")


@pytest.mark.parametrize("case", ["inplace", "sqrt_at_zero"])
def test_a_defect_of_the_eager_code_reads_the_same_in_the_compiled_entry(compiled_run, case):
    """A version conflict (which compiling already raises: it traces the backward) and a NaN
    gradient are the eager code's: the compiled entry reports and locates them as eager does."""
    _, results, _ = compiled_run
    eager, compiled = results[case], results[f"{case}[compile=aot_eager]"]
    assert eager["status"] == compiled["status"] == "fail"
    assert finding_ids(compiled) == finding_ids(eager), (compiled["findings"], eager["findings"])
    assert not {"compile-error", "compile-mismatch"} & set(finding_ids(compiled))
    for e, c in zip(eager["findings"], compiled["findings"], strict=True):
        assert c["message"] == e["message"] and c["location"] == e["location"]
    if case == "inplace":
        assert "as the eager loss's backward does" in compiled["compile"]["like_eager"]


def test_compiled_entries_render_like_other_matrix_entries(compiled_run):
    exit_code, results, out = compiled_run
    assert exit_code == 1
    html = (out / "index.html").read_text()
    assert "mse[compile=zero_backward]" in html and "compile-mismatch" in html
    cases = {case.get("name"): case for case in ET.parse(out / "junit.xml").getroot().iter("testcase")}
    assert cases["mse[compile=aot_eager][cpu]"].find("failure") is None
    failure = cases["mse[compile=zero_backward][cpu]"].find("failure")
    assert failure is not None and "compile-mismatch" in ET.tostring(failure, encoding="unicode")
    markdown = (out / "summary.md").read_text()
    assert "`mse[compile=zero_backward]`" in markdown
    # results.json reads back into the model with its compile block.
    doc = RunResults.from_dict(json.loads((out / "results.json").read_text()))
    entry = next(r for r in doc.results if r.case == "item[compile=aot_eager]")
    assert entry.compile["graphs"] == 2
    assert RunResults.from_dict(doc.to_dict()).to_dict() == doc.to_dict()


@pytest.mark.slow
def test_compile_option_on_the_command_line(tmp_path, cli_invoke):
    path = _write(tmp_path, f"""\
        - name: mse
          loss: compile_faults:squared_error
          inputs: {PAIR}
        """)
    out = tmp_path / "out"
    cli_invoke(["run", path, "-o", out, "--no-isolate", "--compile", "zero_backward"], exit_code=1)
    results = by_case(json.loads((out / "results.json").read_text()))
    assert sorted(results) == ["mse", "mse[compile=zero_backward]"]
    assert results["mse"]["status"] == "pass"
    assert "compile-mismatch" in finding_ids(results["mse[compile=zero_backward]"])
    # The entry exists only with --compile: its reproduce command says so, and selects it alone.
    reproduce = results["mse[compile=zero_backward]"]["reproduce"]
    assert reproduce == (f"gradaudit run {path} --case 'mse[compile=zero_backward]' --device cpu "
                         "--compile zero_backward")
    again = tmp_path / "again"
    cli_invoke(["run", path, "-o", again, "--no-isolate", "--case", "mse[compile=zero_backward]",
                "--device", "cpu", "--compile", "zero_backward"], exit_code=1)
    assert [r["case"] for r in json.loads((again / "results.json").read_text())["results"]] == [
        "mse[compile=zero_backward]"]


# -- Inductor -----------------------------------------------------------------------------------

SAMPLE = REPO / "sample_configs" / "compile_examples.yaml"


def _sample_line(text: str) -> int:
    source = (REPO / "sample_configs" / "compile_losses.py").read_text().splitlines()
    return next(i for i, line in enumerate(source, 1) if text in line)


@pytest.fixture(scope="module")
def inductor_run(tmp_path_factory):
    """The shipped sample, through the real CLI: two Inductor entries (10-60 s each here)."""
    out = tmp_path_factory.mktemp("inductor") / "out"
    proc = run_gradaudit("run", SAMPLE, "-o", out, "--device", "cpu", cwd=REPO, timeout=600)
    assert (out / "results.json").exists(), proc.stdout + proc.stderr
    return proc, by_case(json.loads((out / "results.json").read_text()))


@pytest.mark.slow
def test_an_item_loss_passes_under_inductor_with_its_graph_break(inductor_run):
    _, results = inductor_run
    r = results["normalised_sse[compile=inductor]"]
    assert r["status"] == "pass", r["findings"]
    assert finding_ids(r) == ["compile-graph-break"]
    location = r["findings"][0]["location"]
    assert location["file"] == "compile_losses.py"
    assert location["line"] == _sample_line("denom = targets.abs().sum().item()")
    assert r["compile"]["compared_draws"] == r["draws"] >= 2
    assert r["compile"]["graphs"] == 2


@pytest.mark.slow
def test_dropout_under_inductor_uses_eager_random_kernels_and_passes(inductor_run):
    _, results = inductor_run
    r = results["dropout_mse[compile=inductor]"]
    assert r["status"] == "pass", r["findings"]
    assert r["compile"]["fallback_random"] is True
    assert r["compile"]["compared_draws"] == r["draws"]


@pytest.mark.slow
def test_the_compile_sample_fails_only_its_broken_backend(inductor_run):
    proc, results = inductor_run
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failing = {name: finding_ids(r) for name, r in results.items() if r["status"] != "pass"}
    assert list(failing) == ["squared_error[compile=zero_backward]"], failing
    mismatch = _finding(results["squared_error[compile=zero_backward]"], "compile-mismatch")
    assert mismatch["input"] == "predictions"
    assert sorted(results) == sorted(["soft_ce", "soft_ce[compile=aot_eager]", "normalised_sse",
                                      "normalised_sse[compile=inductor]", "dropout_mse",
                                      "dropout_mse[compile=inductor]", "dropout_mse[compile=aot_eager]",
                                      "squared_error", "squared_error[compile=zero_backward]"])


# -- CUDA (Inductor on CUDA uses Triton) -----------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.slow
def test_inductor_on_cuda_passes_correct_losses_and_catches_a_zero_backward():
    import torch

    from gradaudit.api import Spec, audit
    from tests.losses import compile_faults

    pair = {"pred": Spec(shape=(64, 16)), "target": Spec(shape=(64, 16), requires_grad=False)}
    for loss in (compile_faults.squared_error, compile_faults.soft_ce, compile_faults.item_normalised,
                 compile_faults.dropout_mse):
        backends = ["inductor", "aot_eager"] if loss is compile_faults.dropout_mse else ["inductor"]
        run = audit(loss, inputs=pair, devices=["cuda"], compile=backends)
        for compiled in (r for r in run.results if "[compile=" in r.case):
            assert compiled.status == "pass", (compiled.case, [f.message for f in compiled.findings])
            # Dropout on cuda too: Inductor (fallback_random) and aot_eager draw eager's masks.
            assert compiled.compile["compared_draws"] == compiled.draws, compiled.compile
    assert torch.cuda.is_available()
    run = audit(compile_faults.squared_error, inputs=pair, devices=["cuda"], compile=["zero_backward"])
    compiled = next(r for r in run.results if r.case.endswith("[compile=zero_backward]"))
    assert [f.input for f in compiled.findings if f.id == "compile-mismatch"] == ["pred"]


def test_validate_names_an_unknown_backend_after_importing_the_losses(tmp_path, cli_invoke):
    path = _write(tmp_path, f"""\
        - name: mse
          loss: compile_faults:squared_error
          compile: [zero_backward, zero_backwards]
          inputs: {PAIR}
        """)
    result = cli_invoke(["validate", path], exit_code=1)
    assert "case 'mse': compile: unknown torch.compile backend 'zero_backwards' (did you mean " \
           "'zero_backward'?)" in result.output
    assert "'zero_backward';" not in result.output.replace("did you mean 'zero_backward'?", "")
