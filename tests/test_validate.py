"""`gradaudit validate`: every case is checked even when a module exits at import, and import
problems read like config errors (file:line:col, key, "did you mean")."""

from __future__ import annotations

import textwrap

from tests.conftest import LOSSES

SCRIPT = '''\
import sys


def focal_loss(x):
    return (x ** 2).mean()


def main():
    return 0


sys.exit(main())  # a script: no `if __name__ == "__main__":` guard
'''

GOOD = '''\
def focal_loss(x):
    return (x ** 2).mean()
'''


def _config(tmp_path, cases: str):
    (tmp_path / "script_losses.py").write_text(SCRIPT)
    (tmp_path / "good_losses.py").write_text(GOOD)
    path = tmp_path / "c.yaml"
    path.write_text(f"version: 1\nsys_path: [{LOSSES}]\ncases:\n" + textwrap.dedent(cases))
    return path


def test_a_module_that_exits_at_import_is_reported_and_the_rest_still_checked(tmp_path, cli_invoke):
    path = _config(tmp_path, """\
        - name: script
          loss: script_losses:focal_loss
          inputs: {x: {shape: [3]}}
        - name: as_file
          loss: ./script_losses.py:focal_loss
          inputs: {x: {shape: [3]}}
        - name: typo
          loss: good_losses:focal_los
          inputs: {x: {shape: [3]}}
        """)
    result = cli_invoke(["validate", path], exit_code=1)
    text = result.output
    assert f"error: {path}: 3 losses cannot be imported or called" in text
    assert f"{path}:5:9: cases[0].loss: importing 'script_losses' called sys.exit(0)" in text
    assert f"{path}:8:9: cases[1].loss: importing './script_losses.py' called sys.exit(0)" in text
    assert "`if __name__ == \"__main__\":`" in text
    assert (f"{path}:11:9: cases[2].loss: cannot import 'good_losses:focal_los': 'good_losses' has no "
            "attribute 'focal_los' (did you mean 'focal_loss'?)") in text
    assert "Traceback" not in text


def test_import_problems_use_the_config_error_format(tmp_path, cli_invoke):
    """Same shape as a config error: `error: FILE: what`, then `  FILE:LINE:COL: key: message`."""
    path = _config(tmp_path, """\
        - name: module_typo
          loss: good_loses:focal_loss
          inputs: {x: {shape: [3]}}
        - name: file_typo
          loss: ./good_loses.py:focal_loss
          inputs: {x: {shape: [3]}}
        """)
    text = cli_invoke(["validate", path], exit_code=1).output
    lines = text.splitlines()
    assert lines[0] == f"error: {path}: 2 losses cannot be imported or called"
    assert lines[1].startswith(f"  {path}:5:9: cases[0].loss: cannot import 'good_loses:focal_loss': "
                               "ModuleNotFoundError: ")
    assert "No module named 'good_loses' (did you mean 'good_losses'?)" in lines[1]
    assert lines[2].startswith(f"  {path}:8:9: cases[1].loss: cannot import './good_loses.py:focal_loss': ")
    assert "(did you mean 'good_losses.py'?)" in lines[2]
    config_error = cli_invoke(["validate", _config(tmp_path, """\
        - name: bad_key
          loss: good_losses:focal_loss
          inputs: {x: {shape: [3]}}
          devics: [cpu]
        """)], exit_code=2).output.splitlines()
    assert config_error[0].startswith(f"error: {path}: ")
    assert config_error[1].startswith(f"  {path}:7:3: cases[0].devics: unknown key 'devics' (did you mean")


def test_a_good_config_still_validates(tmp_path, cli_invoke):
    path = _config(tmp_path, """\
        - name: good
          loss: good_losses:focal_loss
          inputs: {x: {shape: [3]}}
        """)
    assert "ok (1 case, 1 after dims matrices)" in cli_invoke(["validate", path]).output
