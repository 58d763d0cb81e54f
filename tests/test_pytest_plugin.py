"""The pytest plugin, run as a real pytest process on small projects in a temporary folder."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gradaudit import Spec
from gradaudit.pytest_plugin import Auditor

from .conftest import REPO

LOSSES = '''\
import torch


def sigmoid_inplace(x):
    y = torch.sigmoid(x)
    y.mul_(2)
    return y.sum()


def sigmoid_twin(x):
    return (torch.sigmoid(x) * 2).sum()
'''
CULPRIT = "my_losses.py:6"  # y.mul_(2): the in-place op that changed what sigmoid saved (the line to change)


def plugin_installed() -> bool:
    return any(ep.name == "gradaudit" for ep in importlib.metadata.entry_points(group="pytest11"))


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """Run pytest in `folder` with this checkout's gradaudit and its plugin."""
    # A venv installed before the entry point existed lacks it: load the plugin by name there.
    plugin = [] if plugin_installed() else ["-p", "gradaudit.pytest_plugin"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{folder}"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugin, *args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    print(proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def project(tmp_path):
    (tmp_path / "my_losses.py").write_text(LOSSES)
    return tmp_path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_the_entry_point_is_declared():
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.entry-points.pytest11]\n", 1)[1].split("\n[", 1)[0]
    entries = [line for line in section.splitlines() if line and not line.startswith("#")]
    assert entries == ['gradaudit = "gradaudit.pytest_plugin"']


@pytest.mark.slow
def test_a_five_line_test_file_fails_with_the_culprit_line(project):
    test_file = write(project, "test_losses.py", """\
        from gradaudit import Spec
        from my_losses import sigmoid_inplace

        def test_sigmoid_inplace(gradaudit):
            gradaudit(sigmoid_inplace, inputs={"x": Spec(shape=(4, 3))}, devices=["cpu"])
        """)
    assert len(test_file.read_text().splitlines()) == 5
    proc = run_pytest(project)
    assert proc.returncode == 1
    assert "1 failed" in proc.stdout
    assert "inplace-version-conflict" in proc.stdout
    assert f"at {CULPRIT} in sigmoid_inplace: y.mul_(2)" in proc.stdout


@pytest.mark.slow
def test_decorated_losses_are_items_with_the_findings_as_failure_text(project):
    write(project, "test_decorated.py", """\
        import gradaudit
        from my_losses import sigmoid_inplace, sigmoid_twin

        inputs = {"x": gradaudit.Spec(shape=(4, 3))}
        test_bad = gradaudit.case(inputs=inputs, devices=["cpu"])(sigmoid_inplace)
        test_good = gradaudit.case(inputs=inputs, devices=["cpu"], name="twin")(sigmoid_twin)

        def test_still_callable():
            import torch
            assert float(test_good(torch.zeros(2))) == 2.0
        """)
    write(project, "test_bad_args.py", """\
        import gradaudit
        from my_losses import sigmoid_twin

        test_twin = gradaudit.case(inputs={"x": gradaudit.Spec(shape=(3,))}, devics=["cpu"])(sigmoid_twin)
        """)
    proc = run_pytest(project, "-v")
    # A mistake in the decorator's arguments fails its item, worded like a config error.
    assert "test_bad_args.py::test_twin FAILED" in proc.stdout
    assert "audit(test_twin): devics: unknown key 'devics' (did you mean 'devices'?)" in proc.stdout
    assert "test_decorated.py::test_bad[cpu] FAILED" in proc.stdout
    assert "test_decorated.py::twin[cpu] PASSED" in proc.stdout
    assert "test_decorated.py::test_still_callable PASSED" in proc.stdout
    # The failure text is the audit's, not a traceback of the plugin.
    assert f"at {CULPRIT} in sigmoid_inplace: y.mul_(2)" in proc.stdout
    assert "pytest_plugin.py" not in proc.stdout
    assert proc.returncode == 1



CONFIG = """\
    version: 1
    defaults: {devices: [cpu]}
    cases:
      - name: inplace
        loss: my_losses:sigmoid_inplace
        inputs: {x: {shape: [4, 3]}}
      - name: twin
        loss: my_losses:sigmoid_twin
        inputs: {x: {shape: [4, 3]}}
      - name: known_bad
        loss: my_losses:sigmoid_inplace
        inputs: {x: {shape: [2]}}
        expect: {status: fail}
      - name: on_gpu
        loss: my_losses:sigmoid_twin
        devices: [cuda]
        inputs: {x: {shape: [2]}}
    """


@pytest.mark.slow
def test_gradaudit_option_collects_each_case_and_device(project):
    write(project, "audit.yaml", CONFIG)
    write(project, "test_unrelated.py", "def test_unrelated():\n    pass\n")
    proc = run_pytest(project, "--gradaudit", "audit.yaml", "-v", "-rs")
    assert "audit.yaml::inplace[cpu] FAILED" in proc.stdout
    assert "audit.yaml::twin[cpu] PASSED" in proc.stdout
    assert "audit.yaml::known_bad[cpu] XFAIL" in proc.stdout
    cuda = "PASSED" if torch.cuda.is_available() else "SKIPPED"
    assert f"audit.yaml::on_gpu[cuda] {cuda}" in proc.stdout
    assert "test_unrelated" not in proc.stdout  # only the config, as asked
    assert f"at {CULPRIT} in sigmoid_inplace: y.mul_(2)" in proc.stdout
    assert "reproduce: gradaudit run audit.yaml --case inplace --device cpu" in proc.stdout
    if not torch.cuda.is_available():
        assert "audit.yaml:14: cuda is not available" in proc.stdout  # the case's line, not ours
    assert proc.returncode == 1


@pytest.mark.slow
def test_x_stops_at_the_first_failure_and_k_selects(project):
    write(project, "audit.yaml", CONFIG)
    stopped = run_pytest(project, "--gradaudit", "audit.yaml", "-x")
    assert "1 failed" in stopped.stdout and "passed" not in stopped.stdout
    write(project, "test_decorated.py", """\
        import gradaudit
        from my_losses import sigmoid_inplace, sigmoid_twin

        test_bad = gradaudit.case(inputs={"x": gradaudit.Spec(shape=(3,))}, devices=["cpu"])(sigmoid_inplace)
        twin = gradaudit.case(inputs={"x": gradaudit.Spec(shape=(3,))}, devices=["cpu"])(sigmoid_twin)
        """)
    selected = run_pytest(project, "--gradaudit", "audit.yaml", ".", "-k", "twin and cpu", "-v")
    assert "audit.yaml::twin[cpu] PASSED" in selected.stdout
    assert "test_decorated.py::twin[cpu] PASSED" in selected.stdout
    assert selected.returncode == 0 and "2 passed, 4 deselected" in selected.stdout


@pytest.mark.slow
def test_items_distribute_over_xdist_workers(project):
    pytest.importorskip("xdist", reason="pytest-xdist is in the test extra: pip install -e '.[test]'")
    write(project, "audit.yaml", CONFIG)
    write(project, "test_decorated.py", """\
        import gradaudit
        from my_losses import sigmoid_twin

        test_twin = gradaudit.case(inputs={"x": gradaudit.Spec(shape=(3,))}, devices=["cpu"])(sigmoid_twin)
        """)
    proc = run_pytest(project, "--gradaudit", "audit.yaml", "test_decorated.py", "-n", "2", "-rA")
    assert "2 workers" in proc.stdout or "created: 2/2 workers" in proc.stdout
    assert "FAILED audit.yaml::inplace[cpu]" in proc.stdout
    assert "PASSED audit.yaml::twin[cpu]" in proc.stdout
    assert "PASSED test_decorated.py::test_twin[cpu]" in proc.stdout
    assert "XFAIL audit.yaml::known_bad[cpu]" in proc.stdout
    assert f"at {CULPRIT} in sigmoid_inplace" in proc.stdout
    assert proc.returncode == 1


@pytest.mark.slow
def test_a_bad_config_is_a_clean_collection_error(project):
    write(project, "audit.yaml", """\
        version: 1
        cases:
          - name: twin
            loss: my_losses:sigmoid_twin
            inputs: {x: {shape: [2], init: randm}}
        """)
    proc = run_pytest(project, "--gradaudit", "audit.yaml")
    assert proc.returncode == 2
    assert "audit.yaml:5:30: cases[0].inputs.x.init: unknown init 'randm'" in proc.stdout
    assert "Traceback" not in proc.stdout


@pytest.mark.slow
def test_the_plugin_does_nothing_unless_asked(project):
    write(project, "test_plain.py", """\
        import sys

        def test_plain(request):
            assert request.config.pluginmanager.has_plugin("gradaudit") or \\
                request.config.pluginmanager.has_plugin("gradaudit.pytest_plugin")
            assert "torch" not in sys.modules and "gradaudit.api" not in sys.modules
        """)
    proc = run_pytest(project)
    assert proc.returncode == 0 and "1 passed" in proc.stdout


def test_the_fixture_object_audits_in_process(tmp_path):
    def twin(x):
        return (torch.sigmoid(x) * 2).sum()

    def inplace(x):
        y = torch.sigmoid(x)
        y.mul_(2)
        return y.sum()

    auditor = Auditor(Path(__file__).parent, devices=["cpu"])
    assert auditor(twin, inputs={"x": Spec(shape=(3,))}).ok
    with pytest.raises(AssertionError, match=r"inplace-version-conflict(.|\n)*test_pytest_plugin.py:\d+ "
                                             r"in inplace: y.mul_\(2\)\n\s+saved for backward at "
                                             r"(.|\n)*y = torch.sigmoid\(x\)"):
        auditor(inplace, inputs={"x": Spec(shape=(3,))}, devices=["cuda"])  # the option wins
    assert not auditor.audit(inplace, inputs={"x": Spec(shape=(3,))}).ok


@pytest.mark.slow
def test_a_skipped_decorated_item_is_reported_at_the_decorator_not_an_internal_error(project):
    """@gradaudit.case without devices= makes a cuda item; skipped (no GPU), pytest once crashed
    with INTERNALERROR (`reportinfo` gave line None). cuda:99 is skipped on every machine."""
    write(project, "test_dev.py", """\
        import gradaudit
        from my_losses import sigmoid_twin


        @gradaudit.case(inputs={"x": gradaudit.Spec(shape=(3,))})
        def default_devices(x):
            return sigmoid_twin(x)


        @gradaudit.case(inputs={"x": gradaudit.Spec(shape=(3,))}, devices=["cuda:99"])
        def nowhere(x):
            return sigmoid_twin(x)
        """)
    proc = run_pytest(project, "-v", "-rs")
    assert "INTERNALERROR" not in proc.stdout + proc.stderr
    assert "test_dev.py::default_devices[cpu] PASSED" in proc.stdout
    assert "test_dev.py::nowhere[cuda:99] SKIPPED" in proc.stdout
    assert "SKIPPED [1] test_dev.py:10: cuda:99 does not exist" in proc.stdout \
        or "SKIPPED [1] test_dev.py:10: cuda is not available" in proc.stdout
    if not torch.cuda.is_available():
        assert "test_dev.py::default_devices[cuda] SKIPPED" in proc.stdout
        assert "SKIPPED [1] test_dev.py:5: cuda is not available" in proc.stdout
    assert proc.returncode == 0


@pytest.mark.slow
def test_an_unknown_gradaudit_device_is_a_usage_error(project):
    write(project, "audit.yaml", CONFIG)
    proc = run_pytest(project, "--gradaudit", "audit.yaml", "--gradaudit-device", "gpu")
    assert proc.returncode == 4  # pytest's usage error: not a run where every item was skipped
    assert "--gradaudit-device gpu: unknown device 'gpu' (did you mean 'cuda'?)" in proc.stderr


def test_the_fixture_skips_a_test_where_nothing_was_audited():
    """devices=["cuda:99"] exists nowhere: the test is skipped with the reason, not passed."""
    def twin(x):
        return (torch.sigmoid(x) * 2).sum()

    auditor = Auditor(Path(__file__).parent, devices=[])
    with pytest.raises(pytest.skip.Exception, match="gradaudit audited nothing: cuda:99: "):
        auditor(twin, inputs={"x": Spec(shape=(3,))}, devices=["cuda:99"])
    assert auditor(twin, inputs={"x": Spec(shape=(3,))}, devices=["cpu", "cuda:99"]).ok


def test_a_config_inside_a_folder_argument_is_not_named_twice(tmp_path, monkeypatch):
    """`pytest . --gradaudit audit.yaml`: pytest 8 collects only audit.yaml from `.` when both are
    arguments, so the plugin leaves it to the folder (pytest_collect_file still picks it up)."""
    from gradaudit import pytest_plugin

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    options = {"gradaudit": ["audit.yaml", "sub/other.yaml", str(tmp_path.parent / "elsewhere.yaml")],
               "gradaudit_device": []}

    class FakeConfig:
        args_source = pytest.Config.ArgsSource.ARGS
        stash = pytest.Stash()

        def __init__(self, args):
            self.args = args

        def getoption(self, name):
            return options[name]

    config = FakeConfig(["."])
    pytest_plugin.pytest_configure(config)
    assert config.args == [".", str(tmp_path.parent / "elsewhere.yaml")]
    config = FakeConfig(["sub", "test_x.py::test_y"])
    pytest_plugin.pytest_configure(config)
    assert config.args == ["sub", "test_x.py::test_y", "audit.yaml", str(tmp_path.parent / "elsewhere.yaml")]
