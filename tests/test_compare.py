"""Headless scenario runs and ``dispatch-lab compare`` on the real broker: the figures say what the modes do.

Each run is a ``ScenarioRun``: real workers on a fresh queue, the dashboard's
model folding their events. Tasks are short (0.05-0.2 s per dot), so the whole
module takes about half a minute. Every run must leave no worker process and no
queue behind.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.helpers import CliResult, figures, run_module
from tui.engine.runner import RunResult, ScenarioRun
from tui.engine.session_log import read
from tui.model.ledger import DONE, LOST
from tui.model.scenarios import Scenario, find
from tui.model.state import KILLED, Model
from tui.teaching.compare import table, verdict
from tui.teaching.export import LEDGER_COLUMNS
from workers.settings import AckMode, DispatchMode

pytestmark = pytest.mark.broker


def headless(
    url: str, scenario: Scenario, prefetch: int, *, ack: AckMode = AckMode.MANUAL, dot: float = 0.1
) -> RunResult:
    """One run with two workers; afterwards no worker runs and its queue is gone."""
    run = ScenarioRun(url, scenario, mode=DispatchMode(prefetch, ack), workers=2, seconds_per_dot=dot, timeout=30)
    result = run.run()
    assert not result.timed_out, f"{scenario.name} at prefetch {prefetch}, {ack} ack did not settle in 30 s"
    assert run.pool.running() == [], "a worker outlived its run"
    assert figures(url, run.queue) is None, f"the run's queue {run.queue} was left behind"
    return result


def by_name(result: RunResult) -> dict[str, list[str]]:
    return {w.name: w.labels for w in result.workers}


# ----- (a) the tutorial's round-robin


@pytest.mark.timeout(60)
def test_round_robin_gives_w1_the_odd_tasks_and_w2_the_even(broker_url: str) -> None:
    result = headless(broker_url, find("tutorial"), prefetch=0)
    assert by_name(result) == {"w1": ["#1", "#3", "#5"], "w2": ["#2", "#4"]}
    assert (result.published, result.done, result.redeliveries, result.lost, result.duplicates) == (5, 5, 0, 0, 0)


# ----- (b) odd-heavy: fair dispatch wins, and the table says why

DOT = 0.15
HEAVY = 5 * DOT
"""Seconds of one heavy task ("Heavy task....."); the light ones take one dot."""


def rendered(results: list[RunResult]) -> str:
    console = Console(file=io.StringIO(), width=110, color_system=None)
    console.print(table(results))
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.timeout(90)
def test_fair_dispatch_beats_round_robin_on_odd_heavy_and_the_table_shows_why(broker_url: str) -> None:
    scenario = find("odd-heavy")
    round_robin = headless(broker_url, scenario, prefetch=0, dot=DOT)
    fair = headless(broker_url, scenario, prefetch=1, dot=DOT)
    summary = {r.mode.prefetch: r.as_dict() for r in (round_robin, fair)}
    for result in (round_robin, fair):
        assert (result.done, result.lost, result.redeliveries) == (8, 0, 0), summary

    # Round-robin: w1 gets every heavy task and w2 every light one, whatever the timing.
    assert by_name(round_robin) == {"w1": ["#1", "#3", "#5", "#7"], "w2": ["#2", "#4", "#6", "#8"]}, summary
    assert round_robin.makespan >= 4 * HEAVY * 0.95, f"w1 alone has four heavy tasks to do: {summary}"
    assert fair.makespan < 0.85 * round_robin.makespan, summary

    # Why: under round-robin the light worker sat idle while heavy tasks waited behind w1's current one...
    rr_w1, rr_w2 = round_robin.workers
    assert rr_w2.idle_while_waiting > 2 * HEAVY * 0.7, summary  # #5 and #7 waited while w2 had nothing to do
    assert rr_w1.idle_while_waiting < 0.25, summary
    assert rr_w1.busy > 3 * rr_w2.busy, f"round-robin's busy times should be lopsided: {summary}"
    # ...while under fair dispatch nobody idled with work waiting, and both were busy about as long.
    for worker in fair.workers:
        assert worker.idle_while_waiting < 0.25, summary
    busy = sorted(w.busy for w in fair.workers)
    assert busy[1] < 1.5 * busy[0], f"fair dispatch should share the work: {summary}"
    assert sorted(len(w.labels) for w in fair.workers) == [4, 4], summary

    text = rendered([round_robin, fair])
    for result, mode in ((round_robin, "round-robin 0"), (fair, "fair 1")):
        first = True
        for w in result.workers:
            lead = rf"{mode}\s+{result.makespan:.1f}s\s+" if first else r"\s+"
            row = rf"^\s*{lead}{w.name}\s+{w.done}\s+{w.busy:.1f}s\s+{w.idle_while_waiting:.1f}s\s+{' '.join(w.labels)}"
            assert re.search(row, text, re.MULTILINE), f"no row {row!r} in\n{text}"
            first = False
    assert "idle* = time a worker sat idle while tasks were waiting" in text
    sentence = verdict([round_robin, fair])
    assert sentence.startswith("fair 1 finished ") and "sooner than round-robin 0" in sentence, sentence
    assert f"there w2 sat idle {rr_w2.idle_while_waiting:.1f}s while tasks waited" in sentence, sentence


# ----- (c) the command line


def compare(args: list[str], url: str | None, timeout: float = 60) -> CliResult:
    return run_module("tui.cli", ["compare", *args], url, timeout=timeout)


@pytest.mark.timeout(90)
def test_compare_prints_json_and_saves_events_ledgers_and_a_picture(broker_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = compare(
        ["--scenario", "tutorial", "--modes", "0,1", "--seconds-per-dot", "0.05", "--json", "--out", str(out)],
        broker_url,
    )
    assert result.code == 0, result
    assert "Traceback" not in result.output
    printed: dict[str, Any] = json.loads(result.stdout)
    assert set(printed) == {"results", "verdict"} and isinstance(printed["verdict"], str)
    runs = printed["results"]
    assert [(r["scenario"], r["prefetch"], r["ack"]) for r in runs] == [
        ("tutorial", 0, "manual"),
        ("tutorial", 1, "manual"),
    ]
    for run in runs:
        assert (run["published"], run["done"], run["lost"], run["timed_out"], run["checks"]) == (5, 5, 0, False, [])
        assert run["makespan_s"] > 0
        assert [w["name"] for w in run["workers"]] == ["w1", "w2"]
        for worker in run["workers"]:
            assert set(worker) == {"name", "done", "busy_s", "idle_while_work_waiting_s", "tasks"}
            assert worker["done"] == len(worker["tasks"])
        assert sorted(t for w in run["workers"] for t in w["tasks"]) == ["#1", "#2", "#3", "#4", "#5"]
    assert [w["tasks"] for w in runs[0]["workers"]] == [["#1", "#3", "#5"], ["#2", "#4"]]

    assert json.loads((out / "compare.json").read_text(encoding="utf-8")) == runs
    svg = (out / "compare.svg").read_text(encoding="utf-8")
    assert svg.startswith("<svg") and "round-robin" in svg.replace("&#160;", " ")
    for run in runs:
        folder = out / f"prefetch-{run['prefetch']}"
        with (folder / "ledger.csv").open(encoding="utf-8", newline="") as stream:
            rows = list(csv.reader(stream))
        assert tuple(rows[0]) == LEDGER_COLUMNS
        # The run's own numbers, with the run (r1: each comparison run is a session of its own).
        assert sorted((row[1], row[4]) for row in rows[1:]) == [(f"r1#{n}", DONE) for n in range(1, 6)]

        items = list(read(folder / "events.jsonl"))
        replayed = Model()  # as `dispatch-lab replay` builds it
        replayed.apply_all(items)
        assert replayed.ledger.done_messages == run["done"]
        assert replayed.mode == DispatchMode(run["prefetch"], "manual"), "the replay shows another mode"
        lanes = {name: [b.label for b in w.lane if b.outcome == "done"] for name, w in replayed.workers.items()}
        assert lanes == {w["name"]: w["tasks"] for w in run["workers"]}
        # The figures are the model's (tui.model.runs): a replay of the log sums the run up the same.
        again = replayed.runs.latest
        assert again is not None and not again.running
        assert round(again.makespan, 3) == run["makespan_s"]
        assert [(w.name, w.done, round(w.busy, 3), round(w.idle_while_waiting, 3)) for w in again.workers] == [
            (w["name"], w["done"], w["busy_s"], w["idle_while_work_waiting_s"]) for w in run["workers"]
        ]
        assert figures(broker_url, replayed.queue_name) is None, "compare left its queue behind"


BAD_ARGS = [
    (["--modes", "x"], "dispatch-lab compare: error: argument --modes: --modes takes prefetch numbers like 0,1,10"),
    (["--modes", ","], "dispatch-lab compare: error: argument --modes: --modes takes prefetch numbers like 0,1,10"),
    (["--scenario", "nope"], "dispatch-lab compare: No scenario 'nope': use one of tutorial, odd-heavy, kill-one,"),
    (["--workers", "0"], "dispatch-lab compare: --workers must be between 1 and 32, not 0."),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("args", "message"), BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_arguments_give_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = compare(args, "amqp://guest:neverUsedPW@127.0.0.1:1/%2F", timeout=20)
    assert result.code == 2, result
    assert "Traceback" not in result.output and result.stdout == "", result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(message), result.stderr
    # argparse's own errors come after its usage lines, as everywhere in dispatch-lab; ours come alone.
    assert all(line.lstrip().startswith(("usage:", "[")) for line in lines[:-1]), result.stderr
    if not message.startswith("dispatch-lab compare: error:"):
        assert len(lines) == 1, result.stderr
    assert lines[-1].endswith((".", "'")), result.stderr


# ----- (d) timed kills, with their expectations


@pytest.mark.timeout(60)
def test_kill_one_passes_its_own_expectations(broker_url: str) -> None:
    scenario = find("kill-one")
    assert scenario.expect and any(a.do == "kill" for a in scenario.actions)
    result = headless(broker_url, scenario, prefetch=0, dot=0.2)
    summary = result.as_dict()
    assert result.checks and all(check.ok for check in result.checks), summary
    assert [c.name for c in result.checks] == list(scenario.expect)
    assert result.kills == 1 and result.redeliveries >= 1 and result.lost == 0, summary
    assert result.done == result.published == 10, summary
    model = result.model
    assert model.workers["w2"].status == KILLED
    redelivered = [r for r in model.ledger.records.values() if any(d.redelivered for d in r.deliveries)]
    assert redelivered, summary
    for record in redelivered:
        assert record.deliveries[0].worker == "w2" and record.deliveries[-1].worker == "w1", record.lifeline()
        assert record.lifeline().endswith("w1 (redelivered) -> done"), record.lifeline()


@pytest.mark.timeout(60)
def test_the_same_kill_under_auto_ack_loses_what_the_worker_held(broker_url: str, tmp_path: Path) -> None:
    path = tmp_path / "kill-auto.json"
    path.write_text(
        json.dumps(
            {
                "name": "kill-auto",
                "description": "kill-one under auto ack: what w2 held is gone with it.",
                "tasks": ["Task..."],
                "repeat": 10,
                "actions": [{"at": 1.0, "do": "kill", "worker": "w2"}],
                "expect": {"lost_at_least": 1},
            }
        ),
        encoding="utf-8",
    )
    scenario = find(str(path))
    result = headless(broker_url, scenario, prefetch=0, ack=AckMode.AUTO, dot=0.2)
    summary = result.as_dict()
    assert [(c.name, c.ok) for c in result.checks] == [("lost_at_least", True)], summary
    assert result.kills == 1 and result.lost >= 1, summary
    assert result.redeliveries == 0, f"the broker forgot auto-acked messages; nothing comes back: {summary}"
    assert result.done + result.lost == result.published == 10, summary
    lost = [r for r in result.model.ledger.records.values() if r.state == LOST]
    assert len(lost) == result.lost
    for record in lost:
        assert not record.deliveries or record.deliveries[-1].worker == "w2", record.lifeline()
