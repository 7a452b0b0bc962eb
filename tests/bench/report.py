"""What a run found: the machine, ratios against the ceilings, the targets, a table and
a plot."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import create_engine, text

if TYPE_CHECKING:
    from tests.bench.run import Bench

RECEIVER_TARGET_CASE = "hookfleet-standard"


def machine(redis_url: str, bench: Bench) -> dict[str, Any]:
    """Cores, CPU model and the versions of everything measured."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": redis.Redis.from_url(redis_url).info("server")["redis_version"],
    }
    url = bench.database_url or (bench.mariadb.create_database() if bench.mariadb else None)
    if url:
        engine = create_engine(url)
        sqlite = engine.dialect.name == "sqlite"
        with engine.connect() as db:
            version = db.execute(text("SELECT sqlite_version()" if sqlite else "SELECT VERSION()"))
            info["sqlite" if sqlite else "mariadb"] = version.scalar_one()
        engine.dispose()
    if bench.wrk:
        done = subprocess.run([bench.wrk, "--version"], capture_output=True, text=True)
        info["wrk"] = (done.stdout or done.stderr).split(" [")[0].strip()
    return info


def _target(
    name: str, measured: float | None, goal: float, higher_is_better: bool, unit: str
) -> dict[str, Any]:
    if measured is None:
        return {"target": name, "goal": goal, "measured": None, "met": None, "unit": unit}
    met = measured >= goal if higher_is_better else measured <= goal
    return {"target": name, "goal": goal, "measured": round(measured, 3), "met": met, "unit": unit}


def summarize(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ratios against the ceiling and the usual recipe, and each target met or not."""
    ceiling = cases.get("ceiling", {}).get("rate")
    usual = cases.get("usual-recipe", {}).get("rate")
    ref_flask = cases.get("ref-flask-gthread", {}).get("rate")
    ref_recipe = cases.get("ref-recipe-gthread", {}).get("rate")
    ratios: dict[str, dict[str, float]] = {}
    for name, case in cases.items():
        if "kind" not in case:
            continue
        ratios[name] = {}
        if ceiling:
            ratios[name]["vs_ceiling"] = round(case["rate"] / ceiling, 3)
        if usual:
            ratios[name]["vs_usual_recipe"] = round(case["rate"] / usual, 3)
        if ref_flask:
            ratios[name]["vs_ref_flask"] = round(case["rate"] / ref_flask, 3)
        if ref_recipe:
            ratios[name]["vs_ref_recipe"] = round(case["rate"] / ref_recipe, 3)
    noop = cases.get("celery-noop", {}).get("rate")
    naive = cases.get("naive-worker", {}).get("rate")
    worker = cases.get("hookfleet-worker", {}).get("rate")
    if worker:
        ratios["hookfleet-worker"] = {}
        if noop:
            ratios["hookfleet-worker"]["vs_celery_noop"] = round(worker / noop, 3)
        if naive:
            ratios["hookfleet-worker"]["vs_naive_worker"] = round(worker / naive, 3)

    receiver = ratios.get(RECEIVER_TARGET_CASE, {})
    half = cases.get(RECEIVER_TARGET_CASE, {}).get("half_rate", {})
    warm = cases.get("inbound-warm", {}).get("half_rate", {})
    cold = cases.get("inbound-cold", {}).get("half_rate", {})
    memory = cases.get("memory", {})
    slow = [c for n, c in cases.items() if n.startswith("slow-")]
    slow_p99 = max(
        (max(c["deliveries"]["p99_ms"], c["inbound"]["p99_ms"]) for c in slow), default=None
    )
    targets = [
        _target(
            "receiver >= 1.0x bare Flask on gunicorn gthread 2x4",
            receiver.get("vs_ref_flask"),
            1.0,
            True,
            "x",
        ),
        _target(
            "receiver >= 3x the usual recipe on gunicorn gthread 2x4",
            receiver.get("vs_ref_recipe"),
            3.0,
            True,
            "x",
        ),
        _target(
            "receiver >= 75% of bare Flask on its own server settings",
            receiver.get("vs_ceiling"),
            0.75,
            True,
            "x",
        ),
        _target(
            "p99 of deliveries and inbound with 8/64/512 slow clients <= 50 ms",
            slow_p99,
            50,
            False,
            "ms",
        ),
        _paced_target(
            _target(
                "receiver p99 at half its max rate <= 15 ms", half.get("p99_ms"), 15, False, "ms"
            ),
            half,
        ),
        _target("call_inbound warm p99 <= 20 ms", warm.get("p99_ms"), 20, False, "ms"),
        _target("call_inbound cold p99 <= 50 ms", cold.get("p99_ms"), 50, False, "ms"),
        _target(
            "worker drain >= 90% of Celery's no-op ceiling",
            ratios.get("hookfleet-worker", {}).get("vs_celery_noop"),
            0.9,
            True,
            "x",
        ),
        _target(
            "worker drain >= 1.3x the naive worker",
            ratios.get("hookfleet-worker", {}).get("vs_naive_worker"),
            1.3,
            True,
            "x",
        ),
        _target(
            "receiver RSS growth over the memory run <= 10%",
            _growth(memory, "receiver"),
            0.10,
            False,
            "x",
        ),
        _target(
            "worker RSS growth over the memory run <= 10%",
            _growth(memory, "worker"),
            0.10,
            False,
            "x",
        ),
    ]
    return {"ratios": ratios, "targets": targets}


def _paced_target(target: dict[str, Any], paced: dict[str, Any]) -> dict[str, Any]:
    """A target read off a paced run that fell short of its rate is neither met nor
    missed: its latency is that of a lighter load (tests/bench/load.py reached)."""
    if not paced.get("short_of_target"):
        return target
    return {**target, "met": None, "short": _short(paced)}


def _short(paced: dict[str, Any]) -> str:
    return f"short: {paced['rate']:.0f} of {paced['target_rate']:.0f}/s"


def _growth(memory: dict[str, Any], who: str) -> float | None:
    before, after = memory.get(f"{who}_rss_before_kb"), memory.get(f"{who}_rss_after_kb")
    if not before or not after:
        return None
    return max(after) / max(before) - 1


_LABELS = {
    "usual-recipe": "usual-recipe (comparison)",
    "no-claim-standard": "no-claim-standard (diagnostic: Hookfleet minus its Redis call)",
}


def render_table(report: dict[str, Any]) -> str:
    """The run as Markdown tables (the README's Performance section is one of these)."""
    cases, summary = report["cases"], report["summary"]
    ratios = summary["ratios"]
    m = report["machine"]
    lines = [
        f"Machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_gib']} GiB; Python "
        f"{m['python']}, Redis {m['redis']}, MariaDB {m.get('mariadb', '?')}; load: "
        f"{report['settings']['generator']}, {report['settings']['connections']} connections, "
        f"{report['settings']['duration_s']} s after {report['settings']['warmup_s']} s warm-up",
        "",
        "| Receiver case | server | req/s | p50 ms | p99 ms | errors | vs bare Flask on "
        "gthread 2x4 | vs usual recipe on gthread 2x4 | vs bare Flask on the same server "
        f"| p99 ms at half rate @ req/s reached ({_paced_by(report['settings'])}) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, case in cases.items():
        if "kind" not in case:
            continue
        r = ratios.get(name, {})
        half = case.get("half_rate")
        half_text = ""
        if half:
            lag = _lag(half)
            half_text = f"{half['p99_ms']:.1f} @ {half['rate']:.0f}/s"
            half_text += f" ({lag})" if lag else ""
            half_text += f" **{_short(half)}**" if half.get("short_of_target") else ""
        label = _LABELS.get(name, name)
        lines.append(
            f"| {label} | {case.get('server', 'shipped')} | {case['rate']:.0f} | "
            f"{case['p50_ms']:.2f} | {case['p99_ms']:.2f} | {case['errors']} | "
            f"{_x(r.get('vs_ref_flask'))} | {_x(r.get('vs_ref_recipe'))} | "
            f"{_same_server(name, case, cases)} | {half_text} |"
        )
    rounds = [
        name + " " + " / ".join(_round(r) for r in case["rounds"])
        for name, case in cases.items()
        if len(case.get("rounds", [])) > 1
    ]
    if rounds:
        lines += [
            "",
            "Rounds in the order run, req/s (p99 ms at half rate, generator lag p99); the "
            "table shows ",
        ]
        lines[-1] += "the median of each: " + "; ".join(rounds) + "."
    slow = [(n, c) for n, c in cases.items() if n.startswith("slow-")]
    if slow:
        lines += [
            "",
            "| Slow or idle connections open | paced at | deliveries p99 ms (errors) | "
            "inbound answers p99 ms (errors) | /healthz | worker restarts |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for _, c in slow:
            d, i = c["deliveries"], c["inbound"]
            lines.append(
                f"| {c['slow_connections']} | {c['pace_per_s']}/s | {d['p99_ms']:.1f} "
                f"({d['errors']}) | {i['p99_ms']:.1f} ({i['errors']}) | "
                f"{c['healthz_status']} | {c['worker_restarts']} |"
            )
    workers = [n for n in ("celery-noop", "hookfleet-worker", "naive-worker") if n in cases]
    if workers or "end-to-end" in cases:
        lines += [
            "",
            "| Worker case | events | seconds | events/s | vs Celery no-op |",
            "|---|---:|---:|---:|---:|",
        ]
        noop = cases.get("celery-noop", {}).get("rate")
        for name in workers:
            case = cases[name]
            label = f"{name} (comparison)" if name == "naive-worker" else name
            lines.append(
                f"| {label} | {case['events']} | {case['seconds']:.1f} | "
                f"{case['rate']:.0f} | {_pct(case['rate'] / noop if noop else None)} |"
            )
        if "end-to-end" in cases:
            e = cases["end-to-end"]
            lines.append(
                f"| end-to-end (receiver + worker, {e['seconds']:.0f} s of load) | "
                f"{e['events']} | {e['total_seconds']:.1f} | {e['committed_rate']:.0f} "
                f"committed (accepted {e['rate']:.0f}/s) | |"
            )
    if "memory" in cases:
        mem = cases["memory"]
        lines += [
            "",
            f"Memory over {mem['events']} events (VmRSS per process, KiB): receiver "
            f"{mem['receiver_rss_before_kb']} -> {mem['receiver_rss_after_kb']}; worker "
            f"{mem['worker_rss_before_kb']} -> {mem['worker_rss_after_kb']}. "
            f"Replay: {mem['replay']}.",
        ]
    lines += ["", "| Target | goal | measured | met |", "|---|---:|---:|---|"]
    for t in summary["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        met = f"not measured ({t['short']})" if "short" in t else met
        measured = "" if t["measured"] is None else f"{t['measured']} {t['unit']}"
        lines.append(f"| {t['target']} | {t['goal']} {t['unit']} | {measured} | {met} |")
    return "\n".join(lines)


def _same_server(name: str, case: dict[str, Any], cases: dict[str, dict[str, Any]]) -> str:
    """The rate against bare Flask on this case's own server (ceiling, ceiling-granian
    or ref-flask-gthread), when that was measured."""
    bare = {"shipped": "ceiling", "granian": "ceiling-granian", "gthread-2x4": "ref-flask-gthread"}
    reference = cases.get(bare.get(case.get("server", "shipped"), ""), {}).get("rate")
    return _pct(case["rate"] / reference) if reference else ""


def _round(case: dict[str, Any]) -> str:
    half = case.get("half_rate")
    if not half:
        return f"{case['rate']:.0f}"
    lag = _lag(half)
    return f"{case['rate']:.0f} ({half['p99_ms']:.1f}" + (f", {lag})" if lag else ")")


def _paced_by(settings: dict[str, Any]) -> str:
    """Which generator timed the half-rate column, and from when it counts."""
    if settings.get("half_rate_generator") == "wrk-paced":
        return "timed by wrk paced, from each send; pacing lag p99"
    return "timed by the Python paced generator, from each due time; generator lag p99"


def _lag(half: dict[str, Any]) -> str:
    """How late the paced generator sent, p99 (tests/bench/load.py generate_paced): the
    part of the p99 at half rate spent before the request left, waiting for the
    generator or for one of its connections (runs before it was recorded have none)."""
    lag = half.get("lag_p99_ms")
    return "" if lag is None else f"{lag:.1f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def write_plot(report: dict[str, Any], path: Path) -> Path | None:
    """Throughput bars (receivers; workers) with each ceiling drawn across. None when
    matplotlib (the ``bench`` extra) is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cases = report["cases"]
    receivers = [(n, c) for n, c in cases.items() if "kind" in c]
    workers = [
        (n, cases[n]) for n in ("celery-noop", "hookfleet-worker", "naive-worker") if n in cases
    ]
    fig, axes = plt.subplots(
        1,
        2 if workers else 1,
        figsize=(14 if workers else 10, 5.5),
        gridspec_kw={"width_ratios": [3, 1]} if workers else None,
        squeeze=False,
    )
    ax = axes[0][0]
    colors = [
        "#888888"
        if n == "ceiling"
        else "#d9822b"
        if n == "usual-recipe"
        else "#bbbbbb"
        if n == "no-claim-standard"
        else "#2b6cb0"
        for n, _ in receivers
    ]
    ax.bar([n for n, _ in receivers], [c["rate"] for _, c in receivers], color=colors)
    if "ceiling" in cases:
        ax.axhline(
            cases["ceiling"]["rate"] * 0.75,
            color="#888888",
            linestyle="--",
            label="75% of the bare-Flask ceiling",
        )
        ax.legend()
    ax.set_ylabel("requests / s")
    ax.set_title("Receiver throughput (same gunicorn settings)")
    ax.tick_params(axis="x", rotation=60)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    if workers:
        wx = axes[0][1]
        wx.bar(
            [n for n, _ in workers],
            [c["rate"] for _, c in workers],
            color=["#888888", "#2b6cb0", "#d9822b"][: len(workers)],
        )
        wx.set_ylabel("events / s")
        wx.set_title("Worker drain into MariaDB")
        wx.tick_params(axis="x", rotation=60)
        for label in wx.get_xticklabels():
            label.set_horizontalalignment("right")
    m = report["machine"]
    fig.suptitle(f"Hookfleet benchmark: {m['cores']} cores, {m['cpu_model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
