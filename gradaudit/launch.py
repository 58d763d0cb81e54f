"""The console script: start the workers' forkserver first, then hand over to the command line.

`gradaudit run` spends most of a small run waiting for the forkserver's `import torch`. Importing
the option parser (typer, rich) and the CLI's own modules takes a few tenths of a second more, so
a plain `run` starts the forkserver before any of that; `gradaudit.cli` then finds it running.
Anything that is not a plain run (`--help`, `--no-isolate`, other commands) starts nothing here.
"""

from __future__ import annotations

import sys

# Options after which `run` starts no workers: asking for help, or auditing in this process.
_NO_WORKERS = frozenset({"--help", "-h", "--no-isolate", "--version"})


def starts_workers(argv: list[str]) -> bool:
    """Whether this command line is a run that will start workers (decided without parsing it)."""
    return argv[:1] == ["run"] and len(argv) > 1 and not _NO_WORKERS.intersection(argv)


def main() -> None:
    """The `gradaudit` console script (and `python -m gradaudit`)."""
    if starts_workers(sys.argv[1:]):
        from gradaudit.forkstart import prestart

        prestart()
    from gradaudit.cli import main as cli_main

    cli_main()
