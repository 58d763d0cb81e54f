"""Import the loss a case names: `module.path:qualname` or `./file.py:qualname`."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class LossImportError(Exception):
    """The loss of one case cannot be imported: an error of that case alone."""


def add_import_roots(root: Path, extra: list[Path]) -> None:
    """Make the config's folder and its sys_path importable, first in line."""
    for folder in [root, *extra]:
        text = str(folder)
        if text not in sys.path:
            sys.path.insert(0, text)


def _is_file_ref(module_part: str) -> bool:
    return module_part.endswith(".py") or "/" in module_part or "\\" in module_part


def resolve(ref: str, root: Path) -> Any:
    """Return the object `ref` names; raise LossImportError with the reason."""
    module_part, _, qualname = ref.rpartition(":")
    if not module_part or not qualname:
        raise LossImportError(f"loss {ref!r} must be 'module.path:qualname' or './file.py:qualname'")
    if _is_file_ref(module_part):
        file = (root / module_part).resolve()
        if not file.is_file():
            siblings = [p.name for p in file.parent.glob("*.py")] if file.parent.is_dir() else []
            raise LossImportError(f"loss file {module_part!r} not found (looked at {file})"
                                  f"{_suggest(file.name, siblings)}")
        name = "gradaudit_user." + "_".join(file.with_suffix("").parts[-3:]).replace("-", "_")
        module = sys.modules.get(name)
        if module is None or getattr(module, "__file__", None) != str(file):
            spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            # The module the config names is missing (not one that it imports): say what was meant.
            named = exc.name and (module_part == exc.name or module_part.startswith(exc.name + "."))
            hint = _module_suggestion(exc.name) if named else ""
            if hint:
                raise ModuleNotFoundError(f"No module named {exc.name!r}{hint}", name=exc.name) from None
            raise
    obj: Any = module
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise LossImportError(
                f"{module_part!r} has no attribute {qualname!r}{_suggest(part, names)}") from None
    if not callable(obj):
        raise LossImportError(f"{ref!r} is a {type(obj).__name__}, not a function or class")
    return obj


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _module_suggestion(name: str) -> str:
    """A "did you mean" for a module that does not exist, among its importable siblings."""
    parent, _, leaf = name.rpartition(".")
    try:
        path = importlib.import_module(parent).__path__ if parent else None
    except (ImportError, AttributeError):
        return ""
    siblings = [m.name for m in pkgutil.iter_modules(path)]
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    return f" (did you mean '{parent + '.' if parent else ''}{close[0]}'?)" if close else ""


def group_of(ref: str) -> str:
    """The module part of a loss reference, used to group cases in reports."""
    return ref.rpartition(":")[0]


def is_class(obj: Callable) -> bool:
    return isinstance(obj, type)
