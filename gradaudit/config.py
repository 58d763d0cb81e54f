"""Load and check a config file (CONTRACT section 1) into plain case specs, with line numbers.

Every problem names the file, the line, the column and the key; all problems are collected and
raised together as one ConfigError, so a user fixes them in one pass. No torch here.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradaudit import schema
from gradaudit.errors import ConfigError, UsageError
from gradaudit.findings import FINDINGS

if TYPE_CHECKING:  # PyYAML is imported where a config is read: workers get parsed specs
    import yaml

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class InputSpec:
    """One input of a case, with its shape resolved to integers."""

    name: str
    shape: list[int]
    dtype: str
    requires_grad: bool
    init: str
    params: dict[str, Any] = field(default_factory=dict)
    # The dim name behind each size of `shape` (None for a literal size), so gradcheck can shrink.
    shape_dims: list[str | None] = field(default_factory=list)
    # The loss receives the leaf itself, not a non-leaf copy of it (as a model output would be).
    leaf: bool = False

    @property
    def is_floating(self) -> bool:
        return self.dtype in schema.FLOAT_DTYPES or self.dtype in schema.COMPLEX_DTYPES


@dataclass
class Expect:
    """Declared, intentional behaviour of a case."""

    no_grad: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    status: str | None = None


@dataclass
class CaseSpec:
    """One case as it will be audited: a matrix entry with every default filled in."""

    name: str
    base_name: str
    loss: str
    inputs: list[InputSpec]
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)
    matrix: dict[str, Any] = field(default_factory=dict)
    expect: Expect = field(default_factory=Expect)
    devices: list[str] = field(default_factory=lambda: ["cpu", "cuda"])
    dtype: str = "float32"
    seed: int = 0
    repeats: int = 2
    timeout: float = 120.0
    rtol: float = 1e-4
    atol: float = 1e-5
    gradcheck: bool = False
    gradcheck_elements: int = 64
    autocast: bool = False  # run the forward under torch.autocast for the device
    per_sample: str | None = None  # the dim the loss reduces per-sample terms over (batchmix)
    max_memory_mb: int | None = None
    # The torch.compile backend this entry audits the loss under; None: the eager loss.
    compile: str | None = None
    # Settings added by later features that have no field yet: name -> value.
    extra: dict[str, Any] = field(default_factory=dict)
    line: int = 0  # where the case starts in the config, for messages
    loss_where: str = ""  # `file:line:col: cases[i].loss`, where the case's loss is named
    # A live callable (or nn.Module) given through the Python API instead of importing `loss`;
    # it cannot travel to another process, so such a spec is audited in the caller's process.
    loss_obj: Any = field(default=None, repr=False, compare=False)
    # The `gradaudit.audit()` arguments this spec came from (a case dict), for a runnable reproduce line.
    api_case: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def draw_name(self) -> str:
        """The name that seeds the input draws: the case name without its precision axes, so
        `case[dtype=float16]` audits the float32 draws of `case[dtype=float32]`, rounded, and
        `case[compile=inductor]` the draws of `case`."""
        dims = [f"{d}={v}" for d, v in self.matrix.items() if d not in ("dtype", "autocast", "compile")]
        if len(dims) == len(self.matrix):
            return self.name
        return self.base_name + (f"[{','.join(dims)}]" if dims else "")


@dataclass
class Config:
    """A checked config: where it lives, its import roots and its expanded cases."""

    path: Path
    display_path: str
    sha256: str
    sys_path: list[Path]
    cases: list[CaseSpec]

    @property
    def root(self) -> Path:
        return self.path.parent


class _Marks:
    """Positions of every key and value in the YAML file, by path of keys and indexes."""

    def __init__(self) -> None:
        self.key: dict[tuple, yaml.Mark] = {}
        self.value: dict[tuple, yaml.Mark] = {}


# Bounds on what a config may expand to. YAML aliases repeat whole blocks, so a few hundred bytes
# can stand for billions of values ("billion laughs"); a block may even contain itself.
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_VALUES = 200_000  # values after aliases are expanded (a 1,000-case config holds about 30,000)
MAX_CASES = 10_000  # cases after dims matrices and precision axes are expanded


class _TooBig(Exception):
    """The YAML expands past a bound; `problem` says which, where."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class _Budget:
    def __init__(self) -> None:
        self.values = 0
        self.open: set[int] = set()  # the nodes being built, to find one that contains itself


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: tuple, marks: _Marks, problems: list,
           display: str, budget: _Budget | None = None) -> Any:
    """Turn a composed YAML node into Python data, recording where each piece sits."""
    budget = budget or _Budget()
    budget.values += 1
    if budget.values > MAX_VALUES:
        raise _TooBig(_at(display, node.start_mark, _dotted(path),
                          f"the config expands to more than {MAX_VALUES:,} values: YAML aliases (*name) "
                          "repeat whole blocks; repeat less"))
    if len(path) > MAX_DEPTH:
        raise _TooBig(_at(display, node.start_mark, _dotted(path[:3]) + " ...",
                          f"nested more than {MAX_DEPTH} levels deep"))
    marks.value[path] = node.start_mark
    if node.id in ("mapping", "sequence"):  # yaml.MappingNode, yaml.SequenceNode
        if id(node) in budget.open:
            raise _TooBig(_at(display, node.start_mark, _dotted(path),
                              "a YAML alias refers to a block that contains it (a recursive alias)"))
        budget.open.add(id(node))
        try:
            return _build_collection(loader, node, path, marks, problems, display, budget)
        finally:
            budget.open.discard(id(node))
    return loader.construct_object(node, deep=True)


def _build_collection(loader, node, path: tuple, marks: _Marks, problems: list, display: str,
                      budget: _Budget) -> Any:
    if node.id == "mapping":
        data: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.id != "scalar":
                problems.append(_at(display, key_node.start_mark, _dotted(path), "a key must be a name"))
                continue
            key = loader.construct_object(key_node, deep=True)
            if key in data:
                problems.append(_at(display, key_node.start_mark, _dotted(path + (key,)),
                                    f"duplicate key '{key}'"))
            marks.key[path + (key,)] = key_node.start_mark
            data[key] = _build(loader, value_node, path + (key,), marks, problems, display, budget)
        return data
    return [_build(loader, item, path + (i,), marks, problems, display, budget)
            for i, item in enumerate(node.value)]


def _dotted(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"


def _at(display: str, mark: yaml.Mark | None, key: str, message: str) -> str:
    where = f"{display}:{mark.line + 1}:{mark.column + 1}" if mark else display
    return f"{where}: {key}: {message}"


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Checker:
    """Collects problems while turning parsed YAML into case specs."""

    def __init__(self, display: str, marks: _Marks) -> None:
        self.display = display
        self.marks = marks
        self.problems: list[str] = []

    def error(self, path: tuple, message: str, on_key: bool = True) -> None:
        self.problems.append(f"{self.at(path, on_key)}: {message}")

    def at(self, path: tuple, on_key: bool = True) -> str:
        """`file:line:col: key.path`: how every problem with this part of the config starts."""
        mark = (self.marks.key.get(path) if on_key else None) or self.marks.value.get(path)
        # Fall back to the nearest enclosing position we know.
        probe = path
        while mark is None and probe:
            probe = probe[:-1]
            mark = self.marks.key.get(probe) or self.marks.value.get(probe)
        return _at(self.display, mark, _dotted(path), "").removesuffix(": ")

    def check_keys(self, data: dict, path: tuple, allowed: list[str], required: list[str]) -> None:
        for key in data:
            if key not in allowed:
                self.error(path + (key,), f"unknown key '{key}'{_suggest(key, allowed)}")
        for key in required:
            if key not in data:
                self.error(path, f"missing required key '{key}'", on_key=True)

    def typed(self, value: Any, kind: str, path: tuple) -> bool:
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "list": isinstance(value, list),
            "map": isinstance(value, dict),
        }.get(kind, True)
        if not ok:
            article = {"int": "an integer", "float": "a number", "bool": "true or false",
                       "str": "a string", "list": "a list", "map": "a mapping"}[kind]
            self.error(path, f"must be {article}, got {value!r}", on_key=True)
        return ok


def load_config(path: str | Path, display_path: str | None = None) -> Config:
    """Read and check a config file; raise ConfigError listing every problem found."""
    path = Path(path)
    display = display_path or str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(display, [f"{display}: cannot read the config: {exc.strerror or exc}"]) from None
    text = raw.decode("utf-8", errors="replace")
    import yaml

    marks = _Marks()
    problems: list[str] = []
    try:
        # libyaml's parser where PyYAML has it: a 1,000-case config parses ten times faster.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
        try:
            node = loader.get_single_node()
            data = _build(loader, node, (), marks, problems, display) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(display, [_at(display, mark, "(yaml)", f"not valid YAML: {reason}")]) from None
    except _TooBig as exc:
        raise ConfigError(display, [exc.problem]) from None
    except RecursionError:
        raise ConfigError(display, [f"{display}: (yaml): nested too deeply to read"]) from None
    if problems:
        raise ConfigError(display, problems)
    checker = _Checker(display, marks)
    cases, sys_path = _check_top(data, checker, path.parent.resolve())
    if checker.problems:
        raise ConfigError(display, checker.problems)
    return Config(path=path.resolve(), display_path=display, sha256=hashlib.sha256(raw).hexdigest(),
                  sys_path=sys_path, cases=cases)


def _check_top(data: Any, c: _Checker, root: Path) -> tuple[list[CaseSpec], list[Path]]:
    if not isinstance(data, dict):
        c.error((), "the config must be a mapping with keys version and cases")
        return [], []
    c.check_keys(data, (), [k.name for k in schema.TOP_KEYS],
                 [k.name for k in schema.TOP_KEYS if k.required])
    if "version" in data and data["version"] != 1:
        c.error(("version",), f"unsupported version {data['version']!r}: this gradaudit reads version 1")
    sys_path: list[Path] = []
    if c.typed(data.get("sys_path", []), "list", ("sys_path",)):
        for i, entry in enumerate(data.get("sys_path", [])):
            if not isinstance(entry, str):
                c.error(("sys_path", i), f"must be a folder path, got {entry!r}", on_key=False)
                continue
            folder = (root / entry).resolve()
            if not folder.is_dir():
                c.error(("sys_path", i), f"folder {entry!r} does not exist", on_key=False)
            sys_path.append(folder)
    defaults = data.get("defaults", {})
    if not c.typed(defaults, "map", ("defaults",)):
        defaults = {}
    allowed_defaults = [k.name for k in schema.SETTING_KEYS + schema.CASE_KEYS if k.name != "name"]
    c.check_keys(defaults, ("defaults",), allowed_defaults + list(EXTRA_SETTINGS), [])
    cases_raw = data.get("cases", [])
    if not c.typed(cases_raw, "list", ("cases",)):
        return [], sys_path
    if "cases" in data and not cases_raw:
        c.error(("cases",), "no cases: add at least one")
    specs: list[CaseSpec] = []
    seen: dict[str, int] = {}
    for i, case in enumerate(cases_raw):
        path = ("cases", i)
        if not isinstance(case, dict):
            c.error(path, "each case must be a mapping with name, loss and inputs", on_key=False)
            continue
        name = case.get("name")
        if isinstance(name, str):
            if name in seen:
                c.error(path + ("name",), f"duplicate case name '{name}' (first at case {seen[name]})")
            seen.setdefault(name, i)
        specs.extend(_check_case(case, defaults, path, c))
        if len(specs) > MAX_CASES:
            c.error(path, f"the config expands to more than {MAX_CASES:,} cases by here (dims matrices "
                    "included): split it into several configs")
            break
    return specs, sys_path


def case_specs(case: dict, display: str) -> list[CaseSpec]:
    """Check one case given as Python data (the Python API) exactly like a config's case.

    Raise ConfigError listing every problem, worded as for a config file, with `display`
    (say "audit(ratio_loss)") in place of the file and line.
    """
    checker = _Checker(display, _Marks())
    specs = _check_case(case, {}, (), checker)
    if checker.problems:
        raise ConfigError(display, checker.problems, what="invalid arguments")
    return specs


# Settings that later features add; a case may give them and they land in CaseSpec.extra.
EXTRA_SETTINGS: dict[str, schema.Key] = {}


def register_setting(key: schema.Key) -> None:
    """Let a feature module add a case/defaults setting (it documents itself like the rest)."""
    EXTRA_SETTINGS[key.name] = key


def _merged(defaults: dict, case: dict) -> dict:
    merged = dict(defaults)
    for key, value in case.items():
        if key in ("dims", "kwargs", "init_kwargs", "expect") and isinstance(value, dict) \
                and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _origin(defaults: dict, case: dict, path: tuple, key: str) -> tuple:
    """The path of the config text where a merged key came from, for messages."""
    return path + (key,) if key in case else ("defaults", key)


def _check_case(case: dict, defaults: dict, path: tuple, c: _Checker) -> list[CaseSpec]:
    allowed = [k.name for k in schema.CASE_KEYS + schema.SETTING_KEYS] + list(EXTRA_SETTINGS)
    required = [k.name for k in schema.CASE_KEYS if k.required]
    c.check_keys(case, path, allowed, [r for r in required if r not in defaults or r == "name"])
    merged = _merged(defaults, case)
    before = len(c.problems)
    name = merged.get("name")
    if "name" in merged and (not isinstance(name, str) or not NAME_RE.match(name)):
        c.error(path + ("name",), f"case name {name!r} must match [A-Za-z0-9_.-]+")
    loss = merged.get("loss")
    if "loss" in merged and (not isinstance(loss, str) or ":" not in loss):
        c.error(_origin(defaults, case, path, "loss"),
                f"loss {loss!r} must be 'module.path:qualname' or './file.py:qualname'")
    settings: dict[str, Any] = {}
    for key in schema.SETTING_KEYS + list(EXTRA_SETTINGS.values()):
        value = merged.get(key.name, key.default)
        where = _origin(defaults, case, path, key.name)
        if key.name in merged and not c.typed(value, key.kind, where):
            continue
        settings[key.name] = value
    _check_settings(settings, defaults, case, path, c)
    for key in ("init_kwargs", "kwargs", "dims", "expect"):
        c.typed(merged.get(key, {}), "map", _origin(defaults, case, path, key))
    dims_raw = merged.get("dims", {}) if isinstance(merged.get("dims", {}), dict) else {}
    for dim, value in dims_raw.items():
        if (dim == "dtype" and settings.get("dtypes")) or (dim == "autocast" and settings.get("autocast")) \
                or (dim == "compile" and settings.get("compile")):
            c.error(_origin(defaults, case, path, "dims") + (dim,),
                    f"dim {dim!r} clashes with the {'compile' if dim == 'compile' else 'precision'} "
                    f"matrix's {dim!r} axis: rename the dim")
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            c.error(_origin(defaults, case, path, "dims") + (dim,),
                    f"dim {dim!r} must be a size (an integer >= 0) or a list of sizes, got {value!r}")
    inputs_raw = merged.get("inputs")
    inputs_path = _origin(defaults, case, path, "inputs")
    if "inputs" in merged and not c.typed(inputs_raw, "map", inputs_path):
        inputs_raw = {}
    inputs_raw = inputs_raw or {}
    expect = _check_expect(merged.get("expect", {}), list(inputs_raw),
                           _origin(defaults, case, path, "expect"), c)
    per_sample = _check_per_sample(merged.get("per_sample"), dims_raw, inputs_raw,
                                   _origin(defaults, case, path, "per_sample"), c)
    if len(c.problems) > before or not isinstance(name, str):
        # Still check the inputs once so every problem is reported in one pass.
        _check_inputs(inputs_raw, {d: 1 for d in dims_raw}, settings.get("dtype", "float32"),
                      inputs_path, c)
        return []
    matrix_axes = [(d, v) for d, v in dims_raw.items() if isinstance(v, list)]
    fixed = {d: v for d, v in dims_raw.items() if not isinstance(v, list)}
    # The precision matrix rides on the same mechanism: "dtype" and "autocast" axes after the dims.
    if settings.get("dtypes"):
        matrix_axes.append(("dtype", list(settings["dtypes"])))
    if settings.get("autocast"):
        matrix_axes.append(("autocast", ["off", "on"]))
    specs = []
    count = math.prod(len(v) for _, v in matrix_axes)
    if count > MAX_CASES:
        c.error(_origin(defaults, case, path, "dims" if "dims" in merged else "dtypes"),
                f"case {name!r} expands to {count:,} cases "
                f"({' x '.join(str(len(v)) for _, v in matrix_axes)}); at most {MAX_CASES:,} per config: "
                "list fewer values, or split the matrix over several cases or configs")
        return []
    combos = list(itertools.product(*[v for _, v in matrix_axes])) if matrix_axes else [()]
    for combo in combos:
        matrix = {d: v for (d, _), v in zip(matrix_axes, combo, strict=True)}
        dims = {**fixed, **{d: v for d, v in matrix.items() if d in dims_raw}}
        inputs = _check_inputs(inputs_raw, dims, settings["dtype"], inputs_path, c)
        if inputs is None:
            return []
        case_dtype = matrix.get("dtype", settings["dtype"])
        if "dtype" in matrix:
            for spec in inputs:
                if spec.dtype in schema.FLOAT_DTYPES:
                    spec.dtype = case_dtype
        full_name = name + (("[" + ",".join(f"{d}={v}" for d, v in matrix.items()) + "]")
                            if matrix else "")
        extra = {k: settings[k] for k in EXTRA_SETTINGS if k in settings}
        eager = CaseSpec(
            name=full_name, base_name=name, loss=loss, inputs=inputs,
            init_kwargs=dict(merged.get("init_kwargs") or {}), kwargs=dict(merged.get("kwargs") or {}),
            dims=dims, matrix=matrix, expect=expect,
            devices=list(settings["devices"]), dtype=case_dtype, seed=settings["seed"],
            repeats=settings["repeats"], timeout=float(settings["timeout"]),
            rtol=float(settings["rtol"]), atol=float(settings["atol"]),
            gradcheck=settings["gradcheck"], gradcheck_elements=settings["gradcheck_elements"],
            autocast=matrix.get("autocast") == "on", max_memory_mb=settings["max_memory_mb"], extra=extra,
            per_sample=per_sample,
            line=(c.marks.value.get(path).line + 1) if c.marks.value.get(path) else 0,
        )
        specs.append(eager)
        specs.extend(compiled_entry(eager, backend) for backend in compile_backends(settings.get("compile")))
    loss_where = c.at(_origin(defaults, case, path, "loss"), on_key=False)
    for spec in specs:
        spec.loss_where = loss_where  # `gradaudit validate` words import problems like config errors
    return specs


def compile_backends(value: Any) -> list[str]:
    """The backends a checked `compile` value names: `true` is `[inductor]`."""
    if value is True:
        return ["inductor"]
    return list(value) if isinstance(value, list) else []


def compiled_entry(eager: CaseSpec, backend: str) -> CaseSpec:
    """The entry `case[...,compile=BACKEND]` beside an eager entry: the same case and draws."""
    matrix = {**eager.matrix, "compile": backend}
    name = eager.base_name + "[" + ",".join(f"{d}={v}" for d, v in matrix.items()) + "]"
    return dataclasses.replace(eager, name=name, matrix=matrix, compile=backend,
                               inputs=copy.deepcopy(eager.inputs), expect=copy.deepcopy(eager.expect))


BACKEND_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _check_compile(value: Any, where: tuple, c: _Checker) -> None:
    """`compile`: true, false or a list of backend names. Whether a name is registered is known only
    after the loss module is imported (it may register its own), so the audit checks that."""
    if isinstance(value, bool) or value is None:
        return
    if not isinstance(value, list):
        c.error(where, f"compile must be true, false or a list of torch.compile backends such as "
                f"[aot_eager, inductor], got {value!r}")
        return
    if not value:
        c.error(where, "compile is empty: list torch.compile backends, e.g. [aot_eager, inductor], or "
                "drop the key")
    for i, name in enumerate(value):
        if not isinstance(name, str) or not BACKEND_RE.match(name):
            c.error(where + (i,), f"backend {name!r} must be a torch.compile backend name such as "
                    "inductor or aot_eager", on_key=False)
        elif value.index(name) != i:
            c.error(where + (i,), f"backend {name!r} is listed twice", on_key=False)


DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+|mps)$")
# Names people type for a device that torch calls otherwise.
_DEVICE_ALIASES = {"gpu": "cuda", "nvidia": "cuda", "metal": "mps", "apple": "mps", "cpu0": "cpu"}
_DEVICE_INDEXED = re.compile(r"^(?:cuda|gpu)\s*[-_: ]?\s*(\d+)$")


def device_problem(name: object) -> str | None:
    """Why `name` is not a device gradaudit audits on (with a "did you mean"), or None if it is one."""
    if isinstance(name, str) and DEVICE_RE.match(name):
        return None
    text = str(name).strip().lower()
    indexed = _DEVICE_INDEXED.match(text)
    if DEVICE_RE.match(text):
        guess = text
    elif indexed:
        guess = f"cuda:{int(indexed[1])}"
    else:
        guess = _DEVICE_ALIASES.get(text)
    hint = f" (did you mean '{guess}'?)" if guess else _suggest(text, ("cpu", "cuda", "mps"))
    return f"unknown device {name!r}{hint}: use cpu, cuda, cuda:N or mps"


def check_device_names(names: list[str], flag: str = "--device") -> None:
    """Raise UsageError for the first name that is not a device (a typo must not skip every case)."""
    for name in names:
        problem = device_problem(name)
        if problem:
            raise UsageError(f"{flag} {name}: {problem}")


def _check_settings(settings: dict, defaults: dict, case: dict, path: tuple, c: _Checker) -> None:
    devices = settings.get("devices", [])
    for i, dev in enumerate(devices if isinstance(devices, list) else []):
        problem = device_problem(dev)
        if problem:
            c.error(_origin(defaults, case, path, "devices") + (i,), problem, on_key=False)
    if isinstance(devices, list) and not devices:
        c.error(_origin(defaults, case, path, "devices"), "devices is empty")
    dtype = settings.get("dtype")
    if isinstance(dtype, str) and dtype not in schema.FLOAT_DTYPES:
        c.error(_origin(defaults, case, path, "dtype"),
                f"dtype {dtype!r} must be a floating dtype{_suggest(dtype, schema.FLOAT_DTYPES)}")
    dtypes = settings.get("dtypes")
    if isinstance(dtypes, list):
        where = _origin(defaults, case, path, "dtypes")
        if not dtypes:
            c.error(where, "dtypes is empty: list floating dtypes, e.g. [float32, float16, bfloat16]")
        for i, dt in enumerate(dtypes):
            if not isinstance(dt, str) or dt not in schema.FLOAT_DTYPES:
                c.error(where + (i,), f"dtype {dt!r} must be a floating dtype"
                        f"{_suggest(dt, schema.FLOAT_DTYPES)}", on_key=False)
            elif dtypes.index(dt) != i:
                c.error(where + (i,), f"dtype {dt!r} is listed twice", on_key=False)
    for key in ("repeats", "gradcheck_elements"):
        if isinstance(settings.get(key), int) and settings[key] < 1:
            c.error(_origin(defaults, case, path, key), f"{key} must be at least 1")
    for key in ("timeout", "rtol", "atol"):
        value = settings.get(key)
        if isinstance(value, float) and math.isnan(value):
            c.error(_origin(defaults, case, path, key), f"{key} must be a number, not NaN"
                    + (" (.inf means no limit)" if key == "timeout" else ""))
        elif isinstance(value, (int, float)) and value < 0:
            c.error(_origin(defaults, case, path, key), f"{key} must not be negative")
    if isinstance(settings.get("max_memory_mb"), int) and settings["max_memory_mb"] < 1:
        c.error(_origin(defaults, case, path, "max_memory_mb"), "max_memory_mb must be at least 1")
    if "compile" in settings:
        _check_compile(settings["compile"], _origin(defaults, case, path, "compile"), c)
    if settings.get("timeout") == 0:
        c.error(_origin(defaults, case, path, "timeout"), "timeout must be positive")


def _check_expect(expect: Any, input_names: list[str], path: tuple, c: _Checker) -> Expect:
    if not isinstance(expect, dict):
        return Expect()
    c.check_keys(expect, path, [k.name for k in schema.EXPECT_KEYS], [])
    result = Expect()
    no_grad = expect.get("no_grad", [])
    if c.typed(no_grad, "list", path + ("no_grad",)):
        for i, name in enumerate(no_grad):
            if name not in input_names and not (isinstance(name, str) and name.startswith("param:")):
                c.error(path + ("no_grad", i), f"no input named {name!r}{_suggest(name, input_names)}",
                        on_key=False)
        result.no_grad = [str(n) for n in no_grad]
    ignore = expect.get("ignore", [])
    if c.typed(ignore, "list", path + ("ignore",)):
        for i, fid in enumerate(ignore):
            if fid not in FINDINGS:
                c.error(path + ("ignore", i), f"unknown finding ID {fid!r}{_suggest(fid, FINDINGS)}",
                        on_key=False)
        result.ignore = [str(f) for f in ignore]
    status = expect.get("status")
    if status is not None:
        if status != "fail":
            c.error(path + ("status",), f"expect.status must be 'fail', got {status!r}")
        result.status = status
    return result


def _check_per_sample(dim: Any, dims: dict, inputs: dict, path: tuple, c: _Checker) -> str | None:
    """`per_sample` names a dim of `dims` that some input's shape uses."""
    if dim is None:
        return None
    if not isinstance(dim, str) or dim not in dims:
        c.error(path, f"must name a dim of dims ({', '.join(map(str, dims)) or 'none defined'}), "
                f"got {dim!r}{_suggest(dim, dims)}")
        return None
    shapes = [spec.get("shape") for spec in inputs.values() if isinstance(spec, dict)]
    if not any(isinstance(shape, list) and dim in shape for shape in shapes):
        c.error(path, f"no input's shape uses dim {dim!r}, so there are no samples to compare")
        return None
    return dim


def _check_inputs(inputs: dict, dims: dict[str, int], default_dtype: str, path: tuple,
                  c: _Checker) -> list[InputSpec] | None:
    before = len(c.problems)
    specs = []
    for name, spec in inputs.items():
        ipath = path + (name,)
        if not isinstance(name, str) or not name.isidentifier():
            c.error(ipath, f"input name {name!r} must be a Python identifier")
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            c.error(ipath, "an input must be a mapping with shape, dtype, init ...")
            continue
        init = spec.get("init")
        if init is not None and init not in schema.INITS:
            c.error(ipath + ("init",), f"unknown init {init!r}{_suggest(init, schema.INITS)}")
            init = None
        dtype = spec.get("dtype")
        if dtype is not None and dtype not in schema.DTYPES:
            c.error(ipath + ("dtype",), f"unknown dtype {dtype!r}{_suggest(dtype, schema.DTYPES)}")
            dtype = None
        base_keys = [k.name for k in schema.INPUT_KEYS]
        params_allowed = list(schema.INITS[init]) if init else []
        all_params = sorted({p for ps in schema.INITS.values() for p in ps})
        for key in spec:
            if key in base_keys:
                continue
            if init and key not in params_allowed:
                hint = _suggest(key, base_keys + params_allowed)
                if key in all_params and not hint:
                    hint = f" (init {init!r} takes: {', '.join(params_allowed) or 'no parameters'})"
                c.error(ipath + (key,), f"unknown key '{key}'{hint}")
            elif not init and key not in all_params:
                c.error(ipath + (key,), f"unknown key '{key}'{_suggest(key, base_keys + all_params)}")
        shape_raw = spec.get("shape", [])
        if isinstance(shape_raw, int) and not isinstance(shape_raw, bool):
            shape_raw = [shape_raw]
        shape: list[int] = []
        shape_dims: list[str | None] = []
        if not isinstance(shape_raw, list):
            c.error(ipath + ("shape",), f"shape must be a list of sizes or dim names, got {shape_raw!r}")
        else:
            for j, size in enumerate(shape_raw):
                if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
                    shape.append(size)
                    shape_dims.append(None)
                elif isinstance(size, str) and size in dims:
                    shape.append(dims[size])
                    shape_dims.append(size)
                elif isinstance(size, str):
                    c.error(ipath + ("shape", j),
                            f"dim {size!r} is not defined in dims{_suggest(size, dims)}", on_key=False)
                else:
                    c.error(ipath + ("shape", j), f"size {size!r} must be an integer >= 0 or a dim name",
                            on_key=False)
        if dtype is None and init in ("randint",):
            dtype = "int64"
        elif dtype is None and init == "bernoulli" and spec.get("dtype") is None:
            dtype = default_dtype
        dtype = dtype or default_dtype
        floating = dtype in schema.FLOAT_DTYPES or dtype in schema.COMPLEX_DTYPES
        if init is None:
            init = "randn" if floating else ("bernoulli" if dtype == "bool" else "randint")
            if init == "randint" and "high" not in spec:
                c.error(ipath, f"integer input {name!r} needs init parameters: add 'init: randint' "
                        "and 'high: N' (one past the largest value)")
        if init == "randn" and not floating:
            c.error(ipath + ("init",), f"init 'randn' makes floating values; dtype is {dtype}")
        params: dict[str, Any] = {}
        for pname, (required, default, _) in schema.INITS[init].items():
            if pname in spec:
                params[pname] = spec[pname]
            elif required and not (init == "randint" and spec.get("init") is None):
                c.error(ipath, f"init {init!r} needs parameter '{pname}'")
            else:
                params[pname] = default
        requires_grad = spec.get("requires_grad")
        if requires_grad is not None and not isinstance(requires_grad, bool):
            c.error(ipath + ("requires_grad",), f"must be true or false, got {requires_grad!r}")
        if requires_grad and not floating:
            c.error(ipath + ("requires_grad",), f"only floating inputs can require grad; dtype is {dtype}")
        leaf = spec.get("leaf", False)
        if not isinstance(leaf, bool):
            c.error(ipath + ("leaf",), f"must be true or false, got {leaf!r}")
        specs.append(InputSpec(name=str(name), shape=shape, dtype=dtype,
                               requires_grad=floating if requires_grad is None else bool(requires_grad),
                               init=init, params=params, shape_dims=shape_dims, leaf=leaf is True))
    if len(c.problems) > before:
        return None
    return specs
