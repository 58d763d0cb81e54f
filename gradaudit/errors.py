"""The one exception family gradaudit raises for problems of ours or of the user's input."""


class GradauditError(Exception):
    """Base of every error the CLI prints without a traceback."""

    exit_code = 2


class ConfigError(GradauditError):
    """A config file that cannot be used: nothing runs."""

    def __init__(self, path: str, problems: list[str], what: str = "invalid config"):
        self.path = path
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{path}: {what}\n{shown}{more}")


class UsageError(GradauditError):
    """Command-line options that contradict each other or name nothing."""


class ResultsError(GradauditError):
    """A results.json that cannot be read back."""


class WorkerStartError(GradauditError):
    """Worker processes cannot start (a broken environment, not a broken loss)."""

    exit_code = 1
