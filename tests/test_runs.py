"""Tests runs: a preset published as a run numbers its tasks from 1 and is summed up when it ends.

Replays of recorded sessions with explicit timestamps (one second per dot), so
every figure is exact: the makespan, each worker's busy time and the time it sat
idle while tasks waited, the verdict; and a session log read back gives the same.
"""

from __future__ import annotations

from pathlib import Path

from tests.recordings import PREFIX, T0, TUTORIAL, Recorder, Recording, msg_id, replay
from tui.engine.session_log import encode, read
from tui.model import observations as obs
from tui.model.runs import run_sentence
from workers.settings import AckMode, DispatchMode

ODD_HEAVY = ("Heavy task.....", "Light task.") * 4


def run_started(r: Recorder, name: str, first: int, tasks: int, prefetch: int) -> None:
    r.add(obs.RunStarted(r.now, name, first, tasks, prefetch, "manual"))


def three_runs() -> Recording:
    """tutorial at prefetch 0, then odd-heavy at prefetch 0, then odd-heavy at prefetch 1, one after another."""
    r = Recorder()
    r.connected()
    r.sample(ready=0, consumers=0)
    r.spawn("w1", 4101, prefetch=0)
    r.spawn("w2", 4102, prefetch=0)
    r.after(1)  # +1: run 1, the tutorial's five tasks (publisher's #1-#5)
    run_started(r, "tutorial", 1, 5, 0)
    r.publish(*TUTORIAL)
    r.receive("w1", 1, 3, 5)
    r.receive("w2", 2, 4)
    r.start("w1", 1)
    r.start("w2", 2)
    r.after(1)  # +2
    r.done("w1", 1)
    r.start("w1", 3)
    r.after(1)  # +3
    r.done("w2", 2)
    r.start("w2", 4)
    r.after(2)  # +5
    r.done("w1", 3)
    r.start("w1", 5)
    r.after(2)  # +7
    r.done("w2", 4)
    r.after(3)  # +10
    r.done("w1", 5)
    r.mark("tutorial over")
    r.after(2)  # +12: run 2, odd-heavy at prefetch 0 (publisher's #6-#13: its heavy tasks are #6, #8, #10, #12)
    run_started(r, "odd-heavy", 6, 8, 0)
    r.publish(*ODD_HEAVY)
    r.receive("w1", 6, 8, 10, 12)  # round-robin: the run's 1st, 3rd, 5th, 7th: every heavy one
    r.receive("w2", 7, 9, 11, 13)
    r.start("w1", 6)
    r.start("w2", 7)
    for second in range(1, 5):  # w2's light tasks: one a second, then nothing to do
        r.after(1)
        r.done("w2", 7 + 2 * (second - 1))
        if second < 4:
            r.start("w2", 7 + 2 * second)
    r.mark("w2 idle")
    r.after(1)  # +17
    for seq in (6, 8, 10):
        r.done("w1", seq)
        r.start("w1", seq + 2)
        r.after(5)  # +22, +27, +32
    r.done("w1", 12)
    r.mark("round-robin over")
    r.after(1)  # +33: F6 to prefetch 1, then run 3 (publisher's #14-#21)
    r.add(obs.ModeRequested(r.now, 1, "manual"))
    r.mode("w1", 1, "manual")
    r.mode("w2", 1, "manual")
    r.after(1)  # +34
    run_started(r, "odd-heavy", 14, 8, 1)
    r.publish(*ODD_HEAVY)
    plan = {  # fair dispatch: the next task goes to whoever acks; (second, worker, done, next)
        0: [("w1", None, 14), ("w2", None, 15)],
        1: [("w2", 15, 16)],
        5: [("w1", 14, 17)],
        6: [("w1", 17, 18), ("w2", 16, 19)],
        7: [("w2", 19, 20)],
        11: [("w1", 18, 21)],
        12: [("w1", 21, None), ("w2", 20, None)],
    }
    began = r.now
    for second, steps in plan.items():
        r.at(began + second)
        for worker, finished, following in steps:
            if finished is not None:
                r.done(worker, finished)
            if following is not None:
                r.receive(worker, following)
                r.start(worker, following)
        if second == 5:
            r.mark("fair running")
    r.mark("fair over")
    return r.recording()


def test_a_runs_tasks_are_numbered_from_1_so_odd_heavy_is_heavy_on_its_odd_tasks() -> None:
    model = replay(three_runs().events)
    records = model.ledger.records
    # The publisher numbers on (#6 is the second run's first task); the labels are the run's own.
    assert [records[msg_id(seq)].label() for seq in (1, 5, 6, 13, 14)] == ["r1#1", "r1#5", "r2#1", "r2#8", "r3#1"]
    heavy = [r.label() for r in records.values() if r.body.startswith("Heavy")]
    assert heavy == ["r2#1", "r2#3", "r2#5", "r2#7", "r3#1", "r3#3", "r3#5", "r3#7"]
    # The timeline shows the run beside its lanes: the short label is the run's number alone.
    assert [b.label for b in model.workers["w1"].lane][3:7] == ["#1", "#3", "#5", "#7"]
    assert model.workers["w1"].lane[0].label == "#1" and records[msg_id(3)].short_label() == "#3"
    # Our own tasks outside any run keep the publisher's numbers; nobody else's get one.
    r = Recorder()
    r.publish("typed.")
    assert replay(r.events).ledger.records[msg_id(1)].label() == "#1"


def test_each_run_is_summed_up_as_compare_does_with_exact_figures() -> None:
    model = replay(three_runs().events)
    tutorial, round_robin, fair = model.runs.all
    assert [(r.number, r.title, r.mode, r.running) for r in model.runs.all] == [
        (1, "r1 tutorial", DispatchMode(0, AckMode.MANUAL), False),
        (2, "r2 odd-heavy", DispatchMode(0, AckMode.MANUAL), False),
        (3, "r3 odd-heavy", DispatchMode(1, AckMode.MANUAL), False),
    ]
    assert model.runs.active == []
    assert (tutorial.makespan, tutorial.done, tutorial.started, tutorial.finished) == (9.0, 5, T0 + 1, T0 + 10)
    assert [(w.name, w.done, w.busy, w.idle_while_waiting, w.labels) for w in tutorial.workers] == [
        ("w1", 3, 9.0, 0.0, ["#1", "#3", "#5"]),
        ("w2", 2, 6.0, 0.0, ["#2", "#4"]),
    ]
    # Round-robin: w2 has done its four light tasks at +4 s and sits idle while w1's heavy ones
    # wait behind its current one, until w1 starts its last (+15 s): 11 s.
    assert round_robin.makespan == 20.0
    assert [(w.name, w.done, w.busy, w.idle_while_waiting, w.labels) for w in round_robin.workers] == [
        ("w1", 4, 20.0, 0.0, ["#1", "#3", "#5", "#7"]),
        ("w2", 4, 4.0, 11.0, ["#2", "#4", "#6", "#8"]),
    ]
    assert fair.makespan == 12.0 and fair.mode_changes == []
    assert [(w.name, w.done, w.busy, w.idle_while_waiting, w.labels) for w in fair.workers] == [
        ("w1", 4, 12.0, 0.0, ["#1", "#4", "#5", "#8"]),
        ("w2", 4, 12.0, 0.0, ["#2", "#3", "#6", "#7"]),
    ]
    # The summary compares the latest run with the earlier ones of the same workload only.
    assert model.runs.comparable() == [round_robin, fair]
    assert run_sentence(model.runs.comparable()) == (
        "r3 fair 1 finished 1.7x sooner than r2 round-robin 0; there w2 sat idle 11.0s while tasks waited."
    )
    assert run_sentence([tutorial]) == "r1 tutorial took 9.0s; no worker sat idle while tasks waited."


def test_a_run_in_progress_has_its_figures_so_far() -> None:
    recording = three_runs()
    model = replay(recording.until("w2 idle"))
    run = model.runs.latest
    assert run is not None and run.running and model.runs.active == [run]
    assert (run.number, run.done, len(run.open)) == (2, 4, 4)
    assert run.elapsed(T0 + 20) == 8.0  # from its first publish at +12
    model = replay(recording.until("fair running"))
    run = model.runs.latest
    assert run is not None and run.running and run.number == 3
    assert [(w.name, w.done, w.busy) for w in run.workers] == [("w1", 1, 5.0), ("w2", 1, 1.0)]
    assert model.runs.comparable()[0].number == 2


def test_a_mode_asked_for_during_a_run_is_part_of_its_mode() -> None:
    r = Recorder()
    r.spawn("w1", 4101, prefetch=0)
    run_started(r, "odd-heavy", 1, 2, 0)
    r.publish("Light.", "Light.")
    r.receive("w1", 1, 2)
    r.start("w1", 1)
    r.after(1)
    r.add(obs.ModeRequested(r.now, 1, "auto"))
    r.done("w1", 1)
    r.start("w1", 2)
    r.after(1)
    r.done("w1", 2)
    run = replay(r.events).runs.all[0]
    assert not run.running and run.describe_mode() == "round-robin 0 → fair 1 auto"


def test_lost_tasks_settle_a_run_and_a_worker_that_never_worked_has_its_line() -> None:
    """Auto ack, w1 killed with its tasks: they are lost, the run ends; w2 did nothing and still counts."""
    r = Recorder()
    r.spawn("w1", 4101, prefetch=0, ack="auto")
    r.spawn("w2", 4102, prefetch=0, ack="auto")
    r.after(1)
    run_started(r, "kill-one", 1, 2, 0)
    r.publish("Task...", "Task...")
    r.receive("w1", 1, 2)
    r.start("w1", 1)
    r.after(2)
    r.kill("w1")
    model = replay(r.events)
    run = model.runs.all[0]
    assert not run.running and (run.lost, run.done, run.makespan) == (2, 0, 2.0)
    assert [(w.name, w.done, w.idle_while_waiting) for w in run.workers] == [("w1", 0, 0.0), ("w2", 0, 2.0)]


def test_a_session_log_replays_the_same_runs(tmp_path: Path) -> None:
    events = three_runs().events
    path = tmp_path / "events.jsonl"
    path.write_text("".join(encode(item) for item in events), encoding="utf-8")
    again = replay(list(read(path)))
    original = replay(events)
    assert repr(again.runs) == repr(original.runs)
    assert [r.label() for r in again.ledger.records.values()] == [r.label() for r in original.ledger.records.values()]
    assert again.ledger.prefix == PREFIX


# ----- on screen: the timeline's run marks, the latest run alone, the summary


def test_the_timeline_marks_each_run_and_can_show_the_latest_alone() -> None:
    from tui.view import timeline

    model = replay(three_runs().events)
    now = T0 + 47
    lines = timeline.render(model, now, 80).plain.splitlines()
    # The whole session (+0 to +47 s): each run named where it begins, shorter where the next follows.
    assert lines[0] == "      ▏r1 tutorial      ▏r2 odd-heavy · round-robin 0      ▏r3 odd-heavy        "
    assert [line[:4] for line in lines[1:3]] == ["w1  ", "w2  "]
    alone = timeline.render(model, now, 80, run=model.runs.all[1]).plain.splitlines()
    # Run 2 alone (20 s, padded 3 % each side): round-robin gives w1 the run's heavy odd tasks.
    assert alone == [
        "       ▏r2 odd-heavy · round-robin 0                                            ",
        "w1   ··#1               #3                #5                #7               ···",
        "w2   ··#2 #4  #6 #8  " + "·" * 59,
        "                        |5s               |10s              |15s                ",  # seconds into the run
    ]
    # Before any run, the timeline is as it always was: no marks row.
    assert len(timeline.render(replay(three_runs().until("tutorial over")[:5]), now, 80).plain.splitlines()) == 3


def test_the_summary_shows_the_last_runs_and_the_verdict_with_outside_names_as_text() -> None:
    import io

    from rich.console import Console

    from tui.view.widgets import run_summary

    model = replay(three_runs().events)
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(run_summary.render(model, T0 + 47))
    assert [line.rstrip() for line in console.file.getvalue().splitlines()] == [  # type: ignore[attr-defined]
        "r1 tutorial   round-robin 0   9.0 s  w1 9.0/0.0  w2 6.0/0.0",
        "r2 odd-heavy  round-robin 0  20.0 s  w1 20.0/0.0  w2 4.0/11.0",
        "r3 odd-heavy  fair 1         12.0 s  w1 12.0/0.0  w2 12.0/0.0",
        "r3 fair 1 finished 1.7x sooner than r2 round-robin 0; there w2 sat idle 11.0s while tasks waited.",
    ]
    rows = run_summary.summary_rows(model.runs.all, model.runs.comparable(), T0 + 47)
    assert [str(row[2].style) for row in rows] == ["bold", "bold", "bold green"]  # the fastest of its workload
    # A scenario file names its run: its name is text, never markup; a run still going says how far it is.
    r = Recorder()
    r.spawn("w1", 4101, prefetch=1)
    run_started(r, "[bold red]x[/]\x1b[2J", 1, 2, 1)
    r.publish("a.", "b.")
    r.receive("w1", 1)
    r.start("w1", 1)
    model = replay(r.events)
    (row,) = run_summary.summary_rows(model.runs.all, model.runs.comparable(), T0 + 0.5)
    assert row[0].plain == "r1 [bold red]x[/]\\x1b[2J" and row[0].spans == []
    assert (row[2].plain, row[3].plain) == ("0.5 s…", "running: 0/2 done")


def test_at_80x24_the_summary_keeps_each_runs_makespan() -> None:
    """The runs box is about 38 cells wide at 80 columns: titles and modes give way, the makespans stay whole."""
    import io

    from rich.console import Console

    from tui.view.widgets import run_summary

    model = replay(three_runs().events)
    console = Console(file=io.StringIO(), width=38, color_system=None)
    console.print(run_summary.render(model, T0 + 47))
    rows = console.file.getvalue().splitlines()[:3]  # type: ignore[attr-defined]
    for row, makespan in zip(rows, ("9.0 s", "20.0 s", "12.0 s"), strict=True):
        assert makespan in row, rows
