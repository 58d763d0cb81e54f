"""The README's examples (Quickstart, "Three ways in", the results schema) run as written, in
order, from a folder like a checkout's.

Fenced blocks of those sections are executed: ```LANG file=NAME``` is saved as NAME, other
```python``` blocks run as scripts, ```bash``` blocks run with bash and must exit 0 (or the code in
`exit=N`), and the lines of a ```text output``` block must appear in the output of the command
before it (a line with "…" is matched up to it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO
from .test_pytest_plugin import plugin_installed

SECTION = "## Three ways in"
# Further sections whose examples run the same way, each in a folder of its own.
RUN_SECTIONS = ["## Quickstart", SECTION, "## results.json and its schema"]
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.M | re.S)


def section_blocks(section: str = SECTION) -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert section in text, f"the README lost its {section!r} section"
    body = text.split(section, 1)[1]
    body = re.split(r"^## ", body, maxsplit=1, flags=re.M)[0]
    return [(m["info"].strip(), m["body"]) for m in FENCE.finditer(body)]


def test_the_readme_leads_with_the_quickstart():
    heads = re.findall(r"^## (.+)$", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.M)
    assert heads[:3] == ["Set-up", "Quickstart", "A config"]
    assert heads.index("The command line") < heads.index("Three ways in") < heads.index("Measurements")
    quickstart = [body for info, body in section_blocks("## Quickstart") if not info.startswith("text")]
    assert sum(len(body.strip().splitlines()) for body in quickstart) <= 12  # about ten lines


def test_the_section_has_all_three_ways():
    infos = [info for info, _ in section_blocks()]
    assert any(i.startswith("bash") for i in infos) and any(i.startswith("python file=") for i in infos)
    bodies = "".join(body for _, body in section_blocks())
    for needle in ("gradaudit run ", "pytest ", "--gradaudit ", "@gradaudit.case", "audit(", "gradcheck=True"):
        assert needle in bodies, needle


def _env(folder: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{folder}",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    if not plugin_installed():  # a venv installed before the entry point existed
        env["PYTEST_PLUGINS"] = "gradaudit.pytest_plugin"
    return env


@pytest.mark.slow
@pytest.mark.parametrize("section", RUN_SECTIONS)
def test_readme_examples_run(tmp_path, section):
    shutil.copytree(REPO / "sample_configs", tmp_path / "sample_configs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = _env(tmp_path)
    last_output = None
    ran = 0
    for n, (info, body) in enumerate(section_blocks(section)):
        words = info.split()
        lang = words[0] if words else ""
        options = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        if "file" in options:
            (tmp_path / options["file"]).write_text(body, encoding="utf-8")
            continue
        if lang == "text" and "output" in words:
            assert last_output is not None, f"block {n}: output with no command before it"
            for line in filter(None, (ln.rstrip() for ln in body.splitlines())):
                wanted = line.split("…", 1)[0].rstrip()
                assert any(out.rstrip().startswith(wanted) for out in last_output.splitlines()), \
                    f"README output line not in the real output: {line!r}\n--- real output:\n{last_output}"
            continue
        if lang == "python":
            script = tmp_path / f"readme_block_{n}.py"
            script.write_text(body, encoding="utf-8")
            command = [sys.executable, str(script)]
        elif lang == "bash":
            command = ["bash", "-euo", "pipefail", "-c", body]
        else:
            continue
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        last_output = proc.stdout + proc.stderr
        expected = int(options.get("exit", 0))
        assert proc.returncode == expected, \
            f"README block {n} ({info}) exited {proc.returncode}, expected {expected}:\n{body}\n{last_output}"
        ran += 1
    assert ran >= (5 if section == SECTION else 1)
