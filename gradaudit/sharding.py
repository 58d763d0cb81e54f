"""`--shard K/N`: a deterministic slice of the case x device matrix, for CI machines to split a suite.

A job's shard is a hash of its case name and device, not its position: adding, removing or
reordering cases never moves another job to a different shard, so a case's history stays on one
machine, and every machine computes the same split without talking to the others.
"""

from __future__ import annotations

import hashlib
import re

from gradaudit.errors import UsageError

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """Read `K/N` (1 <= K <= N); raise UsageError otherwise."""
    match = _SHARD.match(text or "")
    if not match:
        raise UsageError(f"--shard {text!r}: expected K/N, e.g. --shard 2/4 for the second of four slices")
    k, n = int(match[1]), int(match[2])
    if n < 1 or not 1 <= k <= n:
        raise UsageError(f"--shard {text}: K must be between 1 and N (N >= 1), e.g. 1/{max(n, 2)}")
    return k, n


def shard_of(case: str, device: str, n: int) -> int:
    """The 1-based shard, of `n`, that audits `case` on `device`."""
    digest = hashlib.sha256(f"{case}\0{device}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def select_shard(jobs: list, k: int, n: int) -> list:
    """The jobs (anything with `.spec.name` and `.device`) that shard `k` of `n` runs, in order."""
    return [job for job in jobs if shard_of(job.spec.name, job.device, n) == k]
