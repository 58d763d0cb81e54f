"""The pytest plugin: config cases as test items, a `gradaudit` fixture, `@gradaudit.case` losses.

`pytest --gradaudit CONFIG` collects every case x device of a config as a test item
(`CONFIG::case[cpu]`) whose failure text is the audit's findings with their culprit lines. In test
modules, a loss marked with `@gradaudit.case(...)` becomes one item per device, and the
`gradaudit` fixture audits a loss and fails the test on a finding. Nothing happens unless asked:
the plugin imports neither torch nor the audit until a gradaudit item runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradaudit", "gradient audits of loss functions")
    group.addoption("--gradaudit", action="append", default=[], metavar="CONFIG",
                    help="collect every case x device of this gradaudit config as a test (repeatable)")
    group.addoption("--gradaudit-device", action="append", default=[], metavar="NAME",
                    help="audit gradaudit items on this device instead of their own (repeatable)")


def pytest_configure(config: pytest.Config) -> None:
    for name in config.getoption("gradaudit_device"):
        from gradaudit.config import device_problem

        problem = device_problem(name)
        if problem:  # a typo would otherwise skip every gradaudit item, and pytest would pass
            raise pytest.UsageError(f"--gradaudit-device {name}: {problem}")
    paths = config.getoption("gradaudit")
    if not paths:
        return
    # Collect the configs themselves; without other paths, only them (not the testpaths).
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = []
    folders = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    folders = [f for f in folders if f.is_dir()]
    for path in paths:
        # A config inside a folder already asked for is collected from there (pytest_collect_file).
        # Naming it again would make pytest 8 collect only it from that folder, dropping the tests.
        if path not in config.args and not any(f in Path(path).resolve().parents for f in folders):
            config.args.append(path)
    config.stash[_CONFIGS] = {Path(p).resolve() for p in paths}


_CONFIGS = pytest.StashKey[set]()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.resolve() in parent.config.stash.get(_CONFIGS, set()):
        return ConfigFile.from_parent(parent, path=file_path)
    return None


class AuditFailed(Exception):
    """A gradaudit item's audit found a failure; carries the result for the report."""

    def __init__(self, result: Any) -> None:
        super().__init__(result.summary_line)
        self.result = result


class _AuditItem(pytest.Item):
    """Shared by config and decorator items: run, then map the result onto pytest's outcomes."""

    def _judge(self, result: Any) -> None:
        self.user_properties.append(("gradaudit_status", result.status))
        if result.status == "skip":
            # Reported at the item (the config's case), not at this line of the plugin.
            raise pytest.skip.Exception(result.skip_reason or "skipped", _use_item_location=True)
        if result.expected:
            pytest.xfail(f"expected failure: {result.summary_line}")
        if result.is_bad:
            raise AuditFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        from gradaudit.errors import GradauditError
        from gradaudit.terminal import result_text

        if isinstance(excinfo.value, AuditFailed):
            return result_text(excinfo.value.result)
        if isinstance(excinfo.value, GradauditError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)


class ConfigFile(pytest.File):
    """A gradaudit config named by --gradaudit: one item per case x device."""

    def collect(self):
        from gradaudit.config import load_config
        from gradaudit.runner import RunOptions, select_jobs

        display = os.path.relpath(self.path, self.config.invocation_params.dir)
        config = load_config(self.path, display_path=display)
        options = RunOptions(devices=self.config.getoption("gradaudit_device"))
        for job in select_jobs(config, options):
            yield ConfigCaseItem.from_parent(self, name=f"{job.spec.name}[{job.device}]",
                                             audit_config=config, job=job)

    def repr_failure(self, excinfo, style=None):
        from gradaudit.errors import GradauditError

        if isinstance(excinfo.value, GradauditError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)


class ConfigCaseItem(_AuditItem):
    """One case of a config on one device."""

    def __init__(self, *, audit_config: Any, job: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.audit_config = audit_config
        self.job = job

    def runtest(self) -> None:
        from gradaudit.runner import run_in_process

        self._judge(run_in_process(self.audit_config, [self.job])[0])

    def reportinfo(self):
        return self.path, max(self.job.spec.line - 1, 0), f"{self.job.spec.name} [{self.job.device}]"


def _is_audited_loss(obj: object) -> bool:
    return type(obj).__name__ == "AuditedLoss" and type(obj).__module__ == "gradaudit.api"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object):
    if not _is_audited_loss(obj):
        return None
    from gradaudit.api import prepare
    from gradaudit.errors import GradauditError

    items = []
    devices = collector.config.getoption("gradaudit_device")
    line = _first_line(obj.loss)
    for entry in obj.cases:
        settings = dict(entry)
        settings["name"] = settings.get("name") or name
        try:
            specs = prepare(obj.loss, **settings)
        except GradauditError as exc:
            items.append(LossCaseItem.from_parent(collector, name=settings["name"], specs=[],
                                                  device="", problem=exc, line=line))
            continue
        for spec in specs:
            for device in devices or spec.devices:
                items.append(LossCaseItem.from_parent(collector, name=f"{spec.name}[{device}]",
                                                      specs=[spec], device=device, problem=None, line=line))
    return items


class LossCaseItem(_AuditItem):
    """A loss marked with @gradaudit.case, audited on one device."""

    def __init__(self, *, specs: list, device: str, problem: Exception | None, line: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.specs = specs
        self.device = device
        self.problem = problem
        self.line = line

    def runtest(self) -> None:
        from gradaudit.api import run_specs

        if self.problem is not None:
            raise self.problem
        self._judge(run_specs(self.specs, root=self.path.parent, devices=[self.device]).results[0])

    def reportinfo(self):
        # A line number, never None: pytest places skips at the item's location and asserts on it.
        return self.path, self.line, self.name


def _first_line(loss: Any) -> int:
    """The 0-based line where the marked loss is defined (0 where Python cannot tell)."""
    import inspect

    target = inspect.unwrap(loss)
    if not (inspect.isfunction(target) or inspect.isclass(target)):
        target = type(target)  # an nn.Module instance: where its class is
    try:
        return max(inspect.getsourcelines(target)[1] - 1, 0)
    except (OSError, TypeError):
        return 0


class Auditor:
    """The `gradaudit` fixture: `gradaudit(loss, inputs={...})` audits and fails on a finding."""

    def __init__(self, root: Path, devices: list[str]) -> None:
        self.root = root
        self.devices = devices

    def __call__(self, loss: Any, inputs: dict[str, Any], *, fail_on: str = "fail", **settings: Any):
        """Audit `loss` (see gradaudit.audit); raise AssertionError on a failing finding."""
        __tracebackhide__ = True
        result = self.audit(loss, inputs, **settings)
        if result.audited_nothing:
            # Nothing was audited (no such device here): in a test that is a skip that says so.
            pytest.skip(result.audited_nothing_reason())
        result.raise_for_findings(fail_on=fail_on)
        return result

    def audit(self, loss: Any, inputs: dict[str, Any], **settings: Any):
        """Audit `loss` and return the results without judging them."""
        from gradaudit.api import audit

        if self.devices:
            settings["devices"] = self.devices
        return audit(loss, inputs, root=self.root, **settings)


@pytest.fixture(name="gradaudit")
def gradaudit_fixture(request: pytest.FixtureRequest) -> Auditor:
    """Audit a loss in a test: `gradaudit(my_loss, inputs={"x": gradaudit.Spec(shape=(8, 4))})`."""
    return Auditor(Path(request.path).parent, request.config.getoption("gradaudit_device"))
