"""The benchmark script (tests/bench) still runs: a short smoke run of two cases.

It measures nothing worth keeping; it only keeps ``python -m tests.bench.run`` from
rotting while nobody runs the full benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench import profile, run
from tests.processes import ROOT
from tests.servers import RedisServer


def test_benchmark_smoke_run_reports_both_receivers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    output = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench.run",
            # Short and without warm-up blasts (a generator process each): the smoke
            # run keeps the script working, it measures nothing worth keeping.
            "--duration=0.3",
            "--warmup=0",
            # Unique deliveries for 8,000/s, more than this generator reaches on these
            # cores: at 2,000/s a quiet machine ran past them (724 sent of 601 prepared,
            # the repeats answered 200 as duplicates, not queued).
            "--max-rate=8000",
            "--connections=4",
            "--generator=python",
            "--cases=ceiling,hookfleet-standard",
            # One round: how rounds are merged is checked in this process (below).
            "--rounds=1",
            f"--redis-url={redis_server.url}",
            f"--database-url=sqlite:///{tmp_path / 'bench.db'}",
            f"--output={output}",
        ],
        cwd=ROOT,
        # One receiver worker instead of the Procfile's two: a second worker's start
        # (~0.5 CPU-s each) proves nothing more here.
        env={**os.environ, "WEB_CONCURRENCY": "1"},
        capture_output=True,
        text=True,
        # Two receivers started in turn: generous, two shared cores under load took
        # over 120 s once for four.
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(output.read_text())
    ceiling, hookfleet = report["cases"]["ceiling"], report["cases"]["hookfleet-standard"]
    assert ceiling["requests"] > 0 and ceiling["errors"] == 0
    assert hookfleet["requests"] > 0 and hookfleet["errors"] == 0
    # Every prepared delivery is unique and signed: each is accepted and queued once.
    # Only one the generator sent again (it ran past the prepared ones, which it says)
    # is a duplicate, answered 200 and not queued.
    repeated = hookfleet["repeated"]
    assert hookfleet["statuses"] == {
        "202": hookfleet["requests"] - repeated,
        **({"200": repeated} if repeated else {}),
    }
    assert (hookfleet["wrapped"] > 0) == (repeated > 0)
    assert hookfleet["queued"] == hookfleet["statuses"]["202"]
    assert 0 < report["summary"]["ratios"]["hookfleet-standard"]["vs_ceiling"]
    assert "| hookfleet-standard |" in done.stdout
    assert [len(case["rounds"]) for case in (ceiling, hookfleet)] == [1, 1]


def test_headline_cases_run_in_interleaved_rounds_and_the_median_round_stands(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--rounds``: the headline cases take turns, and the round with the median rate
    (of two, the slower) stands for its case, every round's kept beside it. The
    receivers are stand-ins reporting set rates: the smoke run above runs real ones."""
    rates = {"ceiling": [900.0, 700.0, 800.0], "hookfleet-standard": [300.0, 500.0, 400.0]}
    ran: list[str] = []

    def receiver_case(bench: run.Bench, name: str, _database_url: str) -> None:
        ran.append(name)
        rate = rates[name][ran.count(name) - 1]
        bench._keep_round(
            name,
            {
                "rate": rate,
                "requests": int(rate),
                "errors": 0,
                "p50_ms": 1.0,
                "p99_ms": rate / 100,
                "kind": "standard",
                "duplicates": 0.0,
            },
        )

    monkeypatch.setattr(run.Bench, "receiver_case", receiver_case)
    monkeypatch.setattr(run.Bench, "new_database", lambda _bench: "sqlite://")
    monkeypatch.setattr(run.Bench, "seed_branches", lambda *_args, **_kwargs: None)
    reports = []
    for rounds in (2, 3):
        ran.clear()
        output = tmp_path / f"rounds-{rounds}.json"
        argv = ["--cases=ceiling,hookfleet-standard", f"--rounds={rounds}", "--generator=python"]
        argv += [f"--redis-url={redis_server.url}", "--database-url=sqlite://"]
        assert run.main([*argv, f"--output={output}"]) == 0
        assert ran == ["ceiling", "hookfleet-standard"] * rounds
        reports.append(json.loads(output.read_text())["cases"])

    two, three = reports
    assert [r["rate"] for r in two["ceiling"]["rounds"]] == [900.0, 700.0]
    assert two["ceiling"]["rate"] == 700.0 and two["hookfleet-standard"]["rate"] == 300.0
    assert three["ceiling"]["rate"] == 800.0 and three["hookfleet-standard"]["rate"] == 400.0
    assert three["hookfleet-standard"]["p99_ms"] == 4.0  # the median round's own figures


def test_profile_counts_a_sample_for_every_part_on_its_stack(tmp_path: Path) -> None:
    raw = tmp_path / "pyspy.txt"
    raw.write_text(
        "run (gunicorn/workers/gthread.py:1);Flask.wsgi_app (flask/app.py:2);"
        "receive (ingest/views.py:3);_admit (ingest/views.py:4) 3\n"
        "run (gunicorn/workers/gthread.py:1);Flask.wsgi_app (flask/app.py:2);"
        "_count (ingest/metrics.py:5) 1\n"
        "run (gunicorn/workers/gthread.py:1);parse (gunicorn/http/parser.py:6) 4\n"
    )

    total, parts = profile.shares(raw)

    share = dict(parts)
    assert total == 8
    assert share["the whole WSGI app (Flask and ours)"] == 0.5
    assert share["  our webhook view"] == share["    the Redis claim (client side)"] == 3 / 8
    assert share["  metrics (after the view)"] == 1 / 8
    assert share["    verify the signature"] == 0
