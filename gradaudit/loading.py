"""Import the loss a case names: `module.path:qualname` or `./file.py:qualname`."""

from __future__ import annotations

import importlib
import importlib.util
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
            raise LossImportError(f"loss file {module_part!r} not found (looked at {file})")
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
        module = importlib.import_module(module_part)
    obj: Any = module
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LossImportError(
                f"{module_part!r} has no attribute {qualname!r}") from None
    if not callable(obj):
        raise LossImportError(f"{ref!r} is a {type(obj).__name__}, not a function or class")
    return obj


def group_of(ref: str) -> str:
    """The module part of a loss reference, used to group cases in reports."""
    return ref.rpartition(":")[0]


def is_class(obj: Callable) -> bool:
    return isinstance(obj, type)
