"""The command line: parse options, call one library function, write reports, map exit codes.

Nothing here imports torch at start-up, so `gradaudit --help` stays fast.
"""

from __future__ import annotations

import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from gradaudit._version import __version__
from gradaudit.errors import ConfigError, GradauditError, UsageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOTHING_AUDITED = 5  # every result is skip (pytest's "no tests ran" code): a gate must not pass on that
EXIT_NOT_WRITTEN = 3  # the run finished but a report could not be written (results kept elsewhere)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Audit the gradient paths of PyTorch loss functions before training starts.")
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class FailOn(str, Enum):
    fail = "fail"
    warn = "warn"
    new = "new"  # only failures that are not in the --baseline: adopt gradaudit with known debt


def _version(value: bool) -> None:
    if value:
        console.print(f"gradaudit {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Audit the gradient paths of PyTorch loss functions before training starts."""


def _announce(message: str) -> None:
    err_console.print(message)


def write_reports(results, out_dir: Path, json_path: Path | None = None, junit_path: Path | None = None,
                  markdown_path: Path | None = None, *, html: bool = True, announce=_announce) -> None:
    """Write index.html and results.json into `out_dir`, and the extra copies asked for."""
    from gradaudit.files import write_atomic
    from gradaudit.htmlreport import write_html
    from gradaudit.jsonreport import write_json

    write_atomic(out_dir / "results.json", lambda s: write_json(results, s), announce=announce)
    if json_path is not None:
        write_atomic(json_path, lambda s: write_json(results, s), announce=announce)
    if not html:
        return
    write_atomic(out_dir / "index.html", lambda s: write_html(results, s), announce=announce)
    if junit_path is not None:
        from gradaudit.junitreport import write_junit

        write_atomic(junit_path, lambda s: write_junit(results, s), announce=announce)
    if markdown_path is not None:
        from gradaudit.markdownreport import write_markdown

        write_atomic(markdown_path, lambda s: write_markdown(results, s), announce=announce)


def check_outputs(out_dir: Path, *files: Path | None) -> None:
    """Fail now (exit 2), not after the run, when an output cannot be written."""
    from gradaudit.files import check_file, check_folder

    check_folder(out_dir, "-o")
    for path in files:
        if path is not None:
            check_file(path, "output")


def write_or_keep(results, out_dir: Path, *args, **kwargs) -> None:
    """Write the reports; if one cannot be written, say so in one line, keep results.json
    somewhere named and exit EXIT_NOT_WRITTEN."""
    from gradaudit.files import WriteError, keep_results
    from gradaudit.jsonreport import write_json

    try:
        write_reports(results, out_dir, *args, **kwargs)
    except WriteError as exc:
        if exc.path != out_dir / "results.json" and (out_dir / "results.json").is_file():
            kept: Path | None = out_dir / "results.json"
        else:
            kept = keep_results(lambda s: write_json(results, s))
        where = (f"the results are in {kept} (`gradaudit report {kept}` renders them)" if kept
                 else "and the results could not be saved anywhere")
        err_console.print(f"error: {exc}; {where}", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_NOT_WRITTEN) from None


def read_baseline(path: Path | None, fail_on: str = "fail"):
    """Read the --baseline results file (None without one); --fail-on new needs one."""
    from gradaudit.errors import UsageError
    from gradaudit.jsonreport import read_json

    if path is None:
        if fail_on == "new":
            raise UsageError("--fail-on new needs --baseline OLD/results.json to tell new failures from old")
        return None
    return read_json(path)


def exit_code_of(results, fail_on: str = "fail") -> int:
    """0 when every result passed (warnings too unless fail_on is warn), else 1; 5 when nothing
    was audited (every result skip: say `--device cuda` on a machine without one).

    With fail_on "new", only failures that the baseline did not already have count. A shard that
    holds no job at all audits nothing by design, and exits 0.
    """
    if results.audited_nothing:
        return EXIT_NOTHING_AUDITED
    if fail_on == "new":
        from gradaudit.baseline import new_failures

        return EXIT_FAILED if new_failures(results) else EXIT_OK
    if results.bad:
        return EXIT_FAILED
    if fail_on == "warn" and any(r.status == "warn" for r in results.results):
        return EXIT_FAILED
    return EXIT_OK


def _backends(names: list[str] | None) -> list[str]:
    """The --compile backends, checked for form; whether they are registered is the audit's to say."""
    from gradaudit.config import BACKEND_RE

    for name in names or []:
        if not BACKEND_RE.match(name):
            raise UsageError(f"--compile {name!r}: not a torch.compile backend name (e.g. inductor, aot_eager)")
    return list(dict.fromkeys(names or []))


def _fail(exc: GradauditError) -> None:
    from gradaudit.safetext import safe_text

    err_console.print(f"error: {safe_text(exc)}", markup=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="The config file (YAML).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for index.html and results.json.")]
    = Path("gradaudit-report"),
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write results.json here.")] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Also write JUnit XML here.")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Also write a Markdown summary "
                                                     "here (for CI job summaries).")] = None,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="An older results.json: mark new "
                                                     "failures, still failing, fixed and new cases.")] = None,
    case: Annotated[Optional[list[str]], typer.Option("--case", help="Only cases matching this glob "
                                                      "(repeatable).")] = None,
    device: Annotated[Optional[list[str]], typer.Option("--device", help="Audit on this device instead of "
                                                        "the config's (repeatable).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Override every case's seed.")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", min=1, help="Worker processes (default: "
                                                "every usable CPU, at most one per job).")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="Run only slice K of N of the case x "
                                                 "device matrix: K/N (merge with `gradaudit report`).")]
    = None,
    fail_on: Annotated[FailOn, typer.Option("--fail-on", help="Exit 1 on fail only, on warn too, or only "
                                            "on failures new since --baseline.")]
    = FailOn.fail,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Seconds per case and device "
                                                     "(inf: no limit).")]
    = None,
    compile_backends: Annotated[Optional[list[str]], typer.Option(
        "--compile", metavar="BACKEND", help="Also audit every case under torch.compile with this backend "
        "(repeatable), as case[compile=BACKEND], instead of the config's compile lists.")] = None,
    no_isolate: Annotated[bool, typer.Option("--no-isolate", help="Run in this process, one job at a time "
                                             "(debugging; a crash ends the run).")]
    = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only problems and the summary.")]
    = False,
) -> None:
    """Audit every case of CONFIG and write the report."""
    from gradaudit import interrupts
    from gradaudit.config import check_device_names, load_config
    from gradaudit.files import locked
    from gradaudit.runner import NOT_RUN, RunInterrupted, RunOptions, select_jobs
    from gradaudit.runner import run as run_config
    from gradaudit.sharding import parse_shard
    from gradaudit.terminal import RunProgress, print_summary, verdict_line

    progress = RunProgress(console, quiet=quiet)
    stopped_by: Exception | None = None
    with interrupts.on_signals(last=True):
        try:
            check_device_names(device or [])
            if no_isolate and jobs and jobs > 1:
                raise UsageError("--no-isolate audits one job at a time in this process; drop --jobs")
            if not no_isolate:
                from gradaudit.workers import prestart

                prestart()  # the workers' torch import runs while the config is read
            cfg = load_config(config, display_path=str(config))
            old = read_baseline(baseline, fail_on.value)
            options = RunOptions(case_globs=case or [], devices=device or [], seed=seed, timeout=timeout,
                                 command=shlex.join(["gradaudit", *sys.argv[1:]]), jobs=jobs, shard=shard,
                                 isolate=not no_isolate, compile=_backends(compile_backends))
            # Every usage error before anything is created: a bad --case, --shard or --timeout.
            select_jobs(cfg, options)
            if shard:
                parse_shard(shard)
            check_outputs(output, json_path, junit, markdown)
            if not no_isolate:
                from gradaudit.htmlreport import prepare

                prepare()  # the workers are still importing torch: compile the report's template now
            with locked(output, "-o"):
                # In-process, a crash kills gradaudit itself: keep results.json current before each job.
                from gradaudit.jsonreport import JsonCheckpoint

                checkpoint = JsonCheckpoint([output / "results.json", *([json_path] if json_path else [])]) \
                    if no_isolate else None
                try:
                    results = run_config(cfg, options, on_result=progress.result, on_start=progress.start,
                                         on_checkpoint=checkpoint)
                except RunInterrupted as stop:
                    results = stop.results
                    stopped_by = stop.error
                finally:
                    progress.stop()
                # From here on a Ctrl-C waits until the reports are written.
                with interrupts.hold():
                    if old is not None:
                        from gradaudit.baseline import apply_baseline

                        apply_baseline(results, old, str(baseline))
                    print_summary(results, console)
                    write_or_keep(results, output, json_path, junit, markdown)
        except GradauditError as exc:
            _fail(exc)
        except KeyboardInterrupt:  # before the run began: nothing to keep
            raise typer.Exit(EXIT_INTERRUPTED) from None
        signalled = interrupts.received()
    if stopped_by is not None:
        err_console.print(f"error: {stopped_by}", markup=False, soft_wrap=True)
        err_console.print("gradaudit: the finished jobs are in the report; the rest are skip", markup=False)
        raise typer.Exit(getattr(stopped_by, "exit_code", EXIT_FAILED))
    if results.interrupted or signalled:
        finished = sum(1 for r in results.results if r.skip_reason != NOT_RUN)
        err_console.print(f"gradaudit: interrupted; {finished} of {len(results.results)} jobs finished "
                          "and are in the report, the rest are skip", markup=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    code = exit_code_of(results, fail_on.value)
    console.print(verdict_line(results, code, fail_on.value), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="The config file (YAML).")]) -> None:
    """Check CONFIG's keys and import every loss, without running anything.

    Exit 0: valid; 1: a loss cannot be imported or called with its inputs; 2: the config is invalid.
    """
    from gradaudit.config import load_config
    from gradaudit.validate import check_losses

    try:
        cfg = load_config(config, display_path=str(config))
    except GradauditError as exc:
        _fail(exc)
    problems = check_losses(cfg)
    if problems:
        what = f"{len(problems)} loss{'es' if len(problems) != 1 else ''} cannot be imported or called"
        err_console.print(f"error: {ConfigError(str(config), problems, what=what)}", markup=False)
        raise typer.Exit(EXIT_FAILED)
    names = {c.base_name for c in cfg.cases}
    console.print(f"{config}: ok ({len(names)} case{'s' if len(names) != 1 else ''}, "
                  f"{len(cfg.cases)} after dims matrices)", markup=False)


@app.command()
def report(
    results_files: Annotated[list[Path], typer.Argument(help="results.json files; several merge.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for index.html and results.json.")]
    = Path("gradaudit-report"),
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Also write JUnit XML here.")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Also write a Markdown summary "
                                                     "here (for CI job summaries).")] = None,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="An older results.json: mark new "
                                                     "failures, still failing, fixed and new cases.")] = None,
) -> None:
    """Re-render the report from results files (shards of one run merge into one)."""
    from gradaudit import interrupts
    from gradaudit.files import locked
    from gradaudit.jsonreport import read_merged

    with interrupts.on_signals(last=True):
        try:
            merged = read_merged(results_files, warn=lambda text: err_console.print(f"warning: {text}",
                                                                                   markup=False))
            old = read_baseline(baseline)
            if old is not None:
                from gradaudit.baseline import apply_baseline

                apply_baseline(merged, old, str(baseline))
            check_outputs(output, junit, markdown)
            with locked(output, "-o"), interrupts.hold():
                write_or_keep(merged, output, None, junit, markdown)
        except GradauditError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        if interrupts.received():
            raise typer.Exit(EXIT_INTERRUPTED)
    console.print(f"gradaudit: {merged.summary.line()}", markup=False)
    if old is not None:
        from gradaudit.baseline import describe

        console.print(f"gradaudit: {describe(merged)}", markup=False, soft_wrap=True)


@app.command()
def init(path: Annotated[Path, typer.Argument(help="Where to write the starter config.")]
         = Path("gradaudit.yaml"),
         force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False) -> None:
    """Write a commented starter config."""
    from gradaudit.files import write_atomic
    from gradaudit.starter import STARTER_CONFIG

    if path.exists() and not force:
        err_console.print(f"error: {path} exists; use --force to overwrite it", markup=False)
        raise typer.Exit(EXIT_USAGE)
    try:
        write_atomic(path, lambda s: s.write(STARTER_CONFIG), announce=_announce)
    except GradauditError as exc:
        _fail(exc)
    console.print(f"Next: gradaudit validate {path} && gradaudit run {path}", markup=False)


def main() -> None:
    """The console script's entry point."""
    app()
