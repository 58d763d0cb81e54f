"""The Python API: audit a loss from a test or a notebook, through the config's checks and the runner.

`audit()` turns its arguments into the same case dict a config file holds, checks it with the
config's own checker (so a mistake reads as it would in YAML), and runs it with `runner.run`, the
function behind `gradaudit run`. No torch is imported until `audit()` is called.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradaudit.errors import ConfigError
from gradaudit.model import RunResults

if TYPE_CHECKING:
    from gradaudit.config import CaseSpec

_UNSET = object()


class AuditResults(RunResults):
    """What `audit()` returns: the run's results (a RunResults), with the conveniences of a test or
    a notebook. They sit here, above the result model, because they call the reporters."""

    @classmethod
    def of(cls, results: RunResults) -> AuditResults:
        return cls(**{f.name: getattr(results, f.name) for f in dataclasses.fields(RunResults)})

    def to_json(self) -> str:
        """The results.json text of this run."""
        import io

        from gradaudit.jsonreport import write_json

        stream = io.StringIO()
        write_json(self, stream)
        return stream.getvalue()

    def __repr__(self) -> str:
        from gradaudit.terminal import plain_summary

        return plain_summary(self)

    def _repr_html_(self) -> str:
        from gradaudit.notebook import results_html

        return results_html(self)

    def raise_for_findings(self, fail_on: str = "fail") -> None:
        """Raise AssertionError, worded like the terminal summary, if a result failed.

        With fail_on="warn", warnings fail too (as `gradaudit run --fail-on warn`).
        """
        from gradaudit.terminal import plain_summary

        __tracebackhide__ = True  # pytest: show the test's line, not this one
        failing = [r for r in self.results if r.is_bad or (fail_on == "warn" and r.status == "warn")]
        if failing:
            raise AssertionError(plain_summary(self, only=failing))
        if self.audited_nothing:  # as the CLI's exit 5: a check that ran nothing has not passed
            raise AssertionError(self.audited_nothing_reason())


class Spec:
    """One input of a loss, with the same keys as an input in the config file.

    `Spec(shape=(8, 4))`, `Spec(shape=("B",), dtype="int64", init="randint", high=4)`,
    `Spec(init="uniform", low=0.5, high=2.0, shape=(8, 2))`; init parameters sit beside `init`.
    """

    def __init__(self, shape: Any = (), dtype: Any = None, requires_grad: bool | None = None,
                 init: str | None = None, **params: Any) -> None:
        self.shape = shape
        self.dtype = dtype
        self.requires_grad = requires_grad
        self.init = init
        self.params = params

    def to_dict(self) -> dict[str, Any]:
        """The input as the config would hold it."""
        data: dict[str, Any] = {"shape": _plain_shape(self.shape)}
        if self.dtype is not None:
            data["dtype"] = _dtype_name(self.dtype)
        if self.requires_grad is not None:
            data["requires_grad"] = self.requires_grad
        if self.init is not None:
            data["init"] = self.init
        data.update(self.params)
        return data

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"Spec({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spec) and self.to_dict() == other.to_dict()


def _plain_shape(shape: Any) -> Any:
    if isinstance(shape, (tuple, list)) or type(shape).__name__ == "Size":
        return list(shape)
    return shape


def _dtype_name(dtype: Any) -> Any:
    """`torch.float32` or "float32" -> "float32"."""
    return str(dtype).removeprefix("torch.") if not isinstance(dtype, str) else dtype


def loss_ref(loss: Any) -> str:
    """A `module:qualname` naming a callable, for results and messages."""
    if isinstance(loss, str):
        return loss
    target = loss if hasattr(loss, "__qualname__") else type(loss)
    return f"{getattr(target, '__module__', None) or '__main__'}:{target.__qualname__}"


def _case_name(loss: Any) -> str:
    if isinstance(loss, str):
        raw = loss.rpartition(":")[2]
    else:
        raw = getattr(loss, "__name__", None) or type(loss).__name__
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw).strip("_") or "loss"


def _input_dict(name: str, value: Any, display: str) -> dict[str, Any]:
    import torch

    if isinstance(value, Spec):
        return value.to_dict()
    if isinstance(value, torch.Tensor):
        data: dict[str, Any] = {"shape": list(value.shape), "dtype": _dtype_name(value.dtype),
                                "init": "value", "value": value}
        if value.requires_grad:
            data["requires_grad"] = True
        return data
    if isinstance(value, Mapping):
        data = dict(value)
        if "shape" in data:
            data["shape"] = _plain_shape(data["shape"])
        if "dtype" in data:
            data["dtype"] = _dtype_name(data["dtype"])
        return data
    raise ConfigError(display, [f"{display}: inputs.{name}: must be a gradaudit.Spec, a tensor or a "
                                f"mapping of input keys, got {type(value).__name__}"],
                      what="invalid arguments")


def build_case(loss: Any, inputs: Mapping[str, Any], name: str | None = None,
               **settings: Any) -> tuple[dict[str, Any], str]:
    """The config case dict for `audit()`'s arguments, and the name to show in messages."""
    ref = loss_ref(loss)
    name = name or _case_name(loss)
    display = f"audit({name})"
    if not isinstance(inputs, Mapping):
        raise ConfigError(display, [f"{display}: inputs: must be a mapping of input name to Spec or "
                                    f"tensor, got {type(inputs).__name__}"], what="invalid arguments")
    case: dict[str, Any] = {"name": name, "loss": ref,
                            "inputs": {k: _input_dict(k, v, display) for k, v in inputs.items()}}
    for key, value in settings.items():
        if value is not _UNSET and value is not None:
            case[key] = list(value) if key == "devices" and isinstance(value, tuple) else value
    return case, display


def prepare(loss: Callable | str, inputs: Mapping[str, Any], *, name: str | None = None,
            **settings: Any) -> list[CaseSpec]:
    """Check `audit()`'s arguments like a config case; return the case specs (several for a
    dims matrix). Raise ConfigError worded as for a config file."""
    from gradaudit.config import case_specs

    case, display = build_case(loss, inputs, name=name, **settings)
    specs = case_specs(case, display)
    for spec in specs:
        spec.api_case = case
        if not isinstance(loss, str):
            spec.loss_obj = loss
    return specs


def run_specs(specs: list[CaseSpec], root: str | Path | None = None,
              devices: list[str] | None = None) -> AuditResults:
    """Audit prepared specs on their devices (or `devices`) with the runner behind `gradaudit run`."""
    from gradaudit.config import Config
    from gradaudit.runner import RunOptions, run

    display = f"audit({specs[0].base_name})" if specs else "audit()"
    folder = Path(root) if root is not None else Path.cwd()
    config = Config(path=folder.resolve() / display, display_path=display, sha256="", sys_path=[],
                    cases=specs)
    ref = specs[0].loss if specs else ""
    # In this process: a live function or module cannot travel to a worker, and a test or notebook
    # wants the loss's own breakpoints and prints.
    results = run(config, RunOptions(devices=list(devices or []), command=f"gradaudit.audit({ref})",
                                     isolate=False))
    by_name = {spec.name: spec for spec in specs}
    for result in results.results:
        spec = by_name.get(result.case)
        result.reproduce = reproduce_call(spec, result.device, root) if spec is not None else ""
    return AuditResults.of(results)


def reproduce_call(spec: CaseSpec, device: str, root: str | Path | None = None) -> str:
    """One line of Python that audits this case on this device again, to paste into a shell or a cell.

    The loss is named by its "module:qualname" where it can be imported, by its bare name where it
    lives in `__main__` (a notebook or a script: paste the line there). A tensor input is written
    out with its values up to 64 elements; a bigger one is left as a name to fill in.
    """
    case = dict(spec.api_case or {})
    loss = case.pop("loss", spec.loss)
    module, _, qualname = loss.rpartition(":")
    loss_text = qualname if module == "__main__" and qualname.isidentifier() else repr(loss)
    needs_torch = False
    inputs = []
    for input_name, data in (case.pop("inputs", None) or {}).items():
        args = []
        for key, value in data.items():
            text, uses_torch = _python_value(value, input_name)
            needs_torch |= uses_torch
            args.append(f"{key}={text}")
        inputs.append(f"{input_name!r}: Spec({', '.join(args)})")
    case.pop("devices", None)
    name = case.pop("name", None)
    if spec.dims:  # the one entry of a dims matrix this result is (a one-value list keeps its name)
        case["dims"] = {d: [v] if d in spec.matrix else v for d, v in spec.dims.items()}
    if "dtype" in spec.matrix:
        case["dtypes"] = [spec.matrix["dtype"]]
    case["seed"] = spec.seed
    settings = "".join(f", {key}={_python_value(value, key)[0]}" for key, value in case.items())
    if name and name != _case_name(loss):
        settings = f", name={name!r}" + settings
    if root is not None:
        settings += f", root={str(root)!r}"
    imports = "import torch; " if needs_torch else ""
    return (f"{imports}from gradaudit import Spec, audit; audit({loss_text}, inputs={{{', '.join(inputs)}}}, "
            f"devices=[{device!r}]{settings})")


def _python_value(value: Any, name: str) -> tuple[str, bool]:
    """Python source for a config value (and whether it needs torch): tensors by value, small ones."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.numel() <= 64:
            dtype = str(value.dtype).removeprefix("torch.")
            return f"torch.tensor({value.detach().cpu().tolist()!r}, dtype=torch.{dtype})", True
        return f"{name}_tensor", False  # too big to write out: the tensor you passed as `name`
    if callable(value) and not isinstance(value, type):
        return repr(loss_ref(value)), False
    return repr(value), False


def audit(loss: Callable | str, inputs: Mapping[str, Any], *, name: str | None = None,
          devices: list[str] | None = None, root: str | Path | None = None,
          **settings: Any) -> AuditResults:
    """Audit one loss on each device and return the run's results (what `gradaudit run` writes).

    `loss` is a function, an nn.Module (instance or class) or a "module:qualname" string;
    `inputs` maps each positional argument's name to a `Spec`, a real tensor or a mapping of
    config input keys. Any case key of the config may be given: `dims`, `kwargs`, `init_kwargs`,
    `expect`, `dtype`, `seed`, `repeats`, `gradcheck`, ... `root` is the folder that culprit
    paths are shown relative to (default: the working folder).
    """
    return run_specs(prepare(loss, inputs, name=name, devices=devices, **settings), root)


def case(*, inputs: Mapping[str, Any], name: str | None = None, **settings: Any) -> Callable:
    """Mark a loss for the pytest plugin: each device of the case becomes a test item.

    ```
    @gradaudit.case(inputs={"predictions": gradaudit.Spec(shape=(8, 2))}, devices=["cpu"])
    def ratio_loss(predictions): ...
    ```
    The loss stays callable as before; stack the decorator to audit several cases of one loss.
    """

    def mark(loss: Any) -> AuditedLoss:
        previous = loss.cases if isinstance(loss, AuditedLoss) else []
        target = loss.loss if isinstance(loss, AuditedLoss) else loss
        return AuditedLoss(target, [*previous, {"inputs": inputs, "name": name, **settings}])

    return mark


class AuditedLoss:
    """A loss marked with `@gradaudit.case`: still callable, and collected by the pytest plugin."""

    def __init__(self, loss: Any, cases: list[dict[str, Any]]) -> None:
        self.loss = loss
        self.cases = cases
        self.__wrapped__ = loss
        self.__name__ = getattr(loss, "__name__", type(loss).__name__)
        self.__doc__ = getattr(loss, "__doc__", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.loss(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<gradaudit.case of {loss_ref(self.loss)}: {len(self.cases)} case(s)>"
