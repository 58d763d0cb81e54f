"""`gradaudit validate`: import every loss of a config and check that it can be called."""

from __future__ import annotations

import inspect

from gradaudit.config import Config
from gradaudit.loading import LossImportError, add_import_roots, resolve


def check_losses(config: Config) -> list[str]:
    """Return one line per case whose loss cannot be imported, built or called with its inputs.

    Each line reads like a config error (`file:line:col: cases[i].loss: ...`, with a "did you
    mean" for a misspelt name). A module that calls sys.exit() while being imported (a script's
    `sys.exit(main())` without a main guard) is reported, and the remaining cases are still checked.
    """
    add_import_roots(config.root, config.sys_path)
    problems = []
    seen: set[str] = set()
    for spec in config.cases:
        if spec.base_name in seen:
            continue
        seen.add(spec.base_name)
        where = spec.loss_where or f"{config.display_path}:{spec.line}: case {spec.base_name!r}"
        try:
            obj = resolve(spec.loss, config.root)
        except SystemExit as exc:
            module = spec.loss.rpartition(":")[0]
            problems.append(f"{where}: importing {module!r} called sys.exit({exc.code!r}); a module that "
                            "is also a script needs its `sys.exit(main())` under `if __name__ == \"__main__\":`")
            continue
        except LossImportError as exc:
            problems.append(f"{where}: cannot import {spec.loss!r}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
            problems.append(f"{where}: cannot import {spec.loss!r}: {type(exc).__name__}: {exc}")
            continue
        target = obj.forward if isinstance(obj, type) and hasattr(obj, "forward") else obj
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            continue
        args = [None] * len(spec.inputs)
        if isinstance(obj, type) and hasattr(obj, "forward"):
            args = [None, *args]  # self
        try:
            signature.bind(*args, **spec.kwargs)
        except TypeError as exc:
            problems.append(f"{where}: {spec.loss} cannot take inputs "
                            f"({', '.join(i.name for i in spec.inputs)}) and kwargs "
                            f"{sorted(spec.kwargs)}: {exc}")
    problems += _unknown_backends(config)
    return problems


def _unknown_backends(config: Config) -> list[str]:
    """The `compile` backends no one registered, known once every loss module is imported."""
    first = {}
    for spec in config.cases:
        if spec.compile:
            first.setdefault(spec.compile, spec)
    if not first:
        return []
    from gradaudit.compiled import UnknownBackend, check_backend

    problems = []
    for name, spec in first.items():
        try:
            check_backend(name)
        except UnknownBackend as exc:
            problems.append(f"{config.display_path}:{spec.line}: case {spec.base_name!r}: compile: {exc}")
    return problems
