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

from tests.bench import profile
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
            "--max-rate=2000",
            "--connections=4",
            "--generator=python",
            "--cases=ceiling,hookfleet-standard",
            "--rounds=2",
            f"--redis-url={redis_server.url}",
            f"--database-url=sqlite:///{tmp_path / 'bench.db'}",
            f"--output={output}",
        ],
        cwd=ROOT,
        # One receiver worker instead of the Procfile's two: four receivers start in
        # turn, and a second worker's start (~0.5 CPU-s each) proves nothing more here.
        env={**os.environ, "WEB_CONCURRENCY": "1"},
        capture_output=True,
        text=True,
        # Four receivers started in turn: generous, two shared cores under load took
        # over 120 s once.
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(output.read_text())
    ceiling, hookfleet = report["cases"]["ceiling"], report["cases"]["hookfleet-standard"]
    assert ceiling["requests"] > 0 and ceiling["errors"] == 0
    assert hookfleet["requests"] > 0 and hookfleet["errors"] == 0
    # Every delivery was unique and signed, so every one was accepted and queued.
    assert hookfleet["queued"] == hookfleet["requests"]
    assert 0 < report["summary"]["ratios"]["hookfleet-standard"]["vs_ceiling"]
    assert "| hookfleet-standard |" in done.stdout
    # Headline cases run in rounds; of two, the slower one stands for the case.
    for case in (ceiling, hookfleet):
        assert len(case["rounds"]) == 2
        assert case["rate"] == min(r["rate"] for r in case["rounds"])


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
