"""--shard K/N: every job in exactly one shard, balanced, stable as cases come and go; shards merge."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from gradaudit.errors import UsageError
from gradaudit.sharding import parse_shard, select_shard, shard_of
from tests.conftest import check_contract


def _jobs(names: list[str], devices=("cpu", "cuda", "cuda:1")) -> list:
    return [SimpleNamespace(spec=SimpleNamespace(name=n), device=d) for n in names for d in devices]


NAMES = [f"loss_{i:03}" for i in range(100)] + [f"focal[B={b}]" for b in (1, 8, 64)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_every_job_lands_in_exactly_one_shard(n):
    jobs = _jobs(NAMES)
    shards = [select_shard(jobs, k, n) for k in range(1, n + 1)]
    keys = [(j.spec.name, j.device) for shard in shards for j in shard]
    assert len(keys) == len(set(keys)) == len(jobs)
    # Each shard keeps the config's order.
    for shard in shards:
        assert shard == [j for j in jobs if j in shard]


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_shards_are_balanced(n):
    jobs = _jobs(NAMES)
    sizes = [len(select_shard(jobs, k, n)) for k in range(1, n + 1)]
    mean = len(jobs) / n
    assert all(abs(size - mean) <= 0.35 * mean for size in sizes), sizes


def test_adding_or_removing_a_case_moves_no_other_job():
    before = _jobs(NAMES)
    after = _jobs(["a_new_case", *NAMES[:50], "another[B=2]", *NAMES[51:]])
    for n in (2, 3, 7):
        where = {(j.spec.name, j.device): shard_of(j.spec.name, j.device, n) for j in before}
        for job in after:
            key = (job.spec.name, job.device)
            if key in where:
                assert shard_of(*key, n) == where[key]


def test_a_case_and_its_devices_spread_over_shards():
    # Hashing the device too splits the cpu and cuda jobs of one case, so no shard gets all of the GPU.
    jobs = _jobs(NAMES)
    spread = {shard_of(j.spec.name, j.device, 4) for j in jobs if j.device.startswith("cuda")}
    assert spread == {1, 2, 3, 4}


@pytest.mark.parametrize("text, k, n", [("1/1", 1, 1), ("2/4", 2, 4), (" 4 / 4 ", 4, 4)])
def test_parse_shard(text, k, n):
    assert parse_shard(text) == (k, n)


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "a/b", "3", "-1/2", "1/2/3", ""])
def test_bad_shards_are_usage_errors(text):
    with pytest.raises(UsageError, match="--shard"):
        parse_shard(text)


@pytest.mark.parametrize("text", ["0/3", "4/3", "x"])
def test_bad_shard_on_the_command_line_exits_2(write_config, cli_invoke, tmp_path, text):
    path = write_config("""
        version: 1
        cases:
          - {name: a, loss: "faults:good", inputs: {x: {shape: [4]}}}
        """)
    result = cli_invoke(["run", path, "-o", tmp_path / "out", "--shard", text], exit_code=2)
    assert "--shard" in result.output
    assert not (tmp_path / "out").exists()


def _scrub(doc: dict) -> dict:
    doc = dict(doc)
    for key in ("started_at", "duration_s", "command"):
        doc.pop(key)
    doc["results"] = [{k: v for k, v in r.items() if k != "duration_s"} for r in doc["results"]]
    return doc


@pytest.mark.slow
def test_shards_merge_into_the_unsharded_report(write_config, cli_invoke, tmp_path):
    from tests.test_findings import _config

    path = write_config(_config(), "spine.yaml")
    cli_invoke(["run", path, "-o", tmp_path / "whole", "--jobs", "2"], expect_ok=None)
    parts = []
    for k in (1, 2, 3):
        out = tmp_path / f"shard{k}"
        cli_invoke(["run", path, "-o", out, "--shard", f"{k}/3", "--jobs", "2"], expect_ok=None)
        parts.append(out / "results.json")
    sizes = [len(json.loads(p.read_text())["results"]) for p in parts]
    assert all(sizes), sizes  # every shard got work, so the merge really merges
    cli_invoke(["report", *parts, "-o", tmp_path / "merged"])
    check_contract(tmp_path / "merged" / "results.json")
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert len(merged["results"]) == len(whole["results"]) == sum(sizes)
    assert _scrub(merged) == _scrub(whole)
