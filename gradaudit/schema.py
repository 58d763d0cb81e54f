"""The config file's keys, each with its type, default and doc string (CONTRACT section 1).

The README's table of config keys is generated from here (`python -m gradaudit.schema`),
and a test checks that the README is up to date.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    """One config key: where it may appear, what it holds, and what it means."""

    name: str
    kind: str  # "int", "float", "bool", "str", "list", "map", "number-or-list", "bool-or-list"
    doc: str
    default: Any = None
    required: bool = False


TOP_KEYS = [
    Key("version", "int", "Config format version; must be 1.", required=True),
    Key("sys_path", "list", "Extra import roots, relative to the config file "
        "(the config's own folder is always importable).", default=[]),
    Key("defaults", "map", "Values for any case key, used where a case gives none.", default={}),
    Key("cases", "list", "The losses to audit.", required=True),
]

# Keys a case may give, and `defaults` may give for every case.
SETTING_KEYS = [
    Key("devices", "list", "Devices to audit on: cpu, cuda, cuda:N, mps. One that is not "
        "available gives status skip with the reason.", default=["cpu", "cuda"]),
    Key("dtype", "str", "dtype of floating inputs that name none.", default="float32"),
    Key("seed", "int", "Base seed of the input draws.", default=0),
    Key("repeats", "int", "Independent random draws (at least); more are drawn to confirm a "
        "suspected zero-gradient pattern.", default=2),
    Key("timeout", "float", "Seconds for one case on one device (`.inf`: no limit).", default=120),
    Key("rtol", "float", "Relative tolerance of the cpu-vs-cuda comparison.", default=1.0e-4),
    Key("atol", "float", "Absolute tolerance of the cpu-vs-cuda comparison.", default=1.0e-5),
    Key("gradcheck", "bool", "Check the analytic gradient against finite differences in "
        "float64 on small inputs.", default=False),
    Key("gradcheck_elements", "int", "Element budget of gradcheck: dims are shrunk, largest first, "
        "until the differentiable inputs hold at most this many elements; the result says which "
        "dims it used.", default=64),
    Key("dtypes", "list", "A precision matrix: floating inputs (and a module loss's floating "
        "parameters) are cast to each of these dtypes in turn, making cases named "
        "`case[dtype=float16]`. float16 and bfloat16 run on CPU too.", default=None),
    Key("autocast", "bool", "Also run the forward under `torch.autocast` for the device "
        "(float16 on cuda and mps, bfloat16 on cpu), making cases `case[autocast=off]` and "
        "`case[autocast=on]`.", default=False),
    Key("compile", "bool-or-list", "Also audit the loss under `torch.compile` with each of these "
        "backends (`true` means `[inductor]`), making cases `case[compile=inductor]` beside the eager "
        "`case`, on the same draws: compiled loss and gradients are compared with eager's. Any "
        "registered backend name works, one that the loss module registers too.", default=False),
    Key("max_memory_mb", "int", "Memory cap in MiB for one case on cpu: the worker may map this "
        "much more than it holds when the case starts (RLIMIT_AS on Linux). An allocation past it "
        "makes the case an error, not a machine-wide out-of-memory.", default=None),
]

CASE_KEYS = [
    Key("name", "str", "Unique case name: letters, digits, `_`, `.` and `-`.", required=True),
    Key("loss", "str", "`module.path:qualname`, or `./file.py:qualname` relative to the config.",
        required=True),
    Key("init_kwargs", "map", "When `loss` names a class: build it with these. Its parameters "
        "that require grad are audited like inputs.", default={}),
    Key("kwargs", "map", "Constant keyword arguments passed on every call.", default={}),
    Key("dims", "map", "Symbolic sizes used in shapes; a list of values makes a matrix of cases "
        "named `case[B=1]`.", default={}),
    Key("inputs", "map", "Ordered mapping of input name to input spec, passed positionally.",
        required=True),
    Key("expect", "map", "Declared, intentional behaviour.", default={}),
    Key("per_sample", "str", "A dim of `dims` (usually `B`) that the loss reduces per-sample terms "
        "over: the audit then checks that each sample's gradient depends on that sample alone "
        "(finding `batch-mixing`). Leave it out for losses that couple samples on purpose "
        "(in-batch negatives, batch-hard mining).", default=None),
]

INPUT_KEYS = [
    Key("shape", "list", "List of sizes: integers or names from `dims`.", default=[]),
    Key("dtype", "str", "Any torch dtype name: float16, bfloat16, float32, float64, int64, bool, "
        "...", default=None),
    Key("requires_grad", "bool", "Default: true for floating dtypes, false otherwise.",
        default=None),
    Key("init", "str", "How values are drawn; see the init table.", default=None),
    Key("leaf", "bool", "The loss receives the leaf tensor itself. Default: a differentiable input "
        "reaches the loss as a non-leaf copy of its leaf, as a model output would.", default=False),
]

EXPECT_KEYS = [
    Key("no_grad", "list", "Inputs allowed to get no gradient.", default=[]),
    Key("ignore", "list", "Finding IDs to drop for this case.", default=[]),
    Key("status", "str", "`fail` marks a known-bad fixture: it passes only while the audit "
        "still fails it.", default=None),
]

# init name -> {parameter: (required, default, doc)}
INITS: dict[str, dict[str, tuple[bool, Any, str]]] = {
    "randn": {"mean": (False, 0.0, "mean"), "std": (False, 1.0, "standard deviation")},
    "rand": {"low": (False, 0.0, "lower bound"), "high": (False, 1.0, "upper bound")},
    "uniform": {"low": (False, 0.0, "lower bound"), "high": (False, 1.0, "upper bound")},
    "normal": {"mean": (False, 0.0, "mean"), "std": (False, 1.0, "standard deviation")},
    "randint": {"low": (False, 0, "lowest value"), "high": (True, None, "one past the highest")},
    "bernoulli": {"p": (False, 0.5, "probability of 1 / True")},
    "zeros": {},
    "ones": {},
    "full": {"value": (True, None, "the fill value")},
    "softmax": {"dim": (False, -1, "dimension that sums to 1")},
    "log_softmax": {"dim": (False, -1, "dimension whose exp sums to 1")},
    "one_hot": {"num_classes": (False, None, "classes (default: last dim of shape)")},
    "value": {"value": (True, None, "a nested list, used as is")},
    "factory": {"factory": (True, None, "`module:qualname`, called as f(shape, dtype, device, "
                            "generator)")},
}

FLOAT_DTYPES = ("float16", "half", "bfloat16", "float32", "float", "float64", "double")
COMPLEX_DTYPES = ("complex64", "cfloat", "complex128", "cdouble")
INT_DTYPES = ("uint8", "int8", "int16", "short", "int32", "int", "int64", "long")
DTYPES = FLOAT_DTYPES + COMPLEX_DTYPES + INT_DTYPES + ("bool",)


def key_table() -> str:
    """Render the config keys as the Markdown table the README carries."""
    rows = ["| where | key | default | meaning |", "|---|---|---|---|"]

    def add(where: str, keys: list[Key]) -> None:
        for key in keys:
            default = "required" if key.required else ("" if key.default is None else
                                                       f"`{key.default!r}`".replace("'", ""))
            rows.append(f"| {where} | `{key.name}` | {default} | {key.doc} |")

    add("top", TOP_KEYS)
    add("case / defaults", SETTING_KEYS)
    add("case", CASE_KEYS)
    add("input", INPUT_KEYS)
    add("expect", EXPECT_KEYS)
    rows.append("")
    rows.append("| init | parameters |")
    rows.append("|---|---|")
    for name, params in INITS.items():
        text = ", ".join(f"`{p}`" + (" (required)" if req else f"={dflt!r}" if dflt is not None
                                     else "") for p, (req, dflt, _) in params.items())
        rows.append(f"| `{name}` | {text} |")
    return "\n".join(rows)


README_BEGIN = "<!-- config-keys:begin (generated by `python -m gradaudit.schema`) -->"
README_END = "<!-- config-keys:end -->"


def update_readme(text: str) -> str:
    """Return the README text with its generated config-key table replaced."""
    head, _, rest = text.partition(README_BEGIN)
    _, _, tail = rest.partition(README_END)
    return f"{head}{README_BEGIN}\n{key_table()}\n{README_END}{tail}"


if __name__ == "__main__":  # pragma: no cover - a maintainer's command
    from pathlib import Path

    readme = Path(__file__).resolve().parent.parent / "README.md"
    readme.write_text(update_readme(readme.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"Updated the config key table in {readme}")
