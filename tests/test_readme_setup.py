"""The README's two set-up commands: CI runs exactly the test one, and the first one works."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _setup_commands() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_readme_has_the_two_setup_commands():
    install_and_run, install_and_test = _setup_commands()
    assert install_and_run.startswith("python -m pip install torch==2.13.0")
    assert "gradaudit run sample_configs/" in install_and_run
    sample = install_and_run.rsplit("gradaudit run ", 1)[1].split()[0]
    assert (REPO / sample).is_file()
    assert install_and_test.endswith("python -m pytest -q")


def test_ci_runs_exactly_the_readme_test_command():
    _, install_and_test = _setup_commands()
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert install_and_test in ci_lines
    assert ci_lines[-1] == install_and_test  # the last thing CI does, so its exit code is CI's
