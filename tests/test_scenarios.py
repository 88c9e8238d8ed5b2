"""Scenario files: the built-in ones load, malformed ones are refused in one sentence, checks judge models.

Pure and fast: no broker. ``check`` is judged against models folded from the
recorded sessions of tests/recordings.py, whose figures are pinned first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.recordings import (
    ODD_HEAVY,
    TUTORIAL,
    Recording,
    replay,
    session_auto_ack_loss,
    session_duplicate,
    session_kill,
    session_round_robin,
)
from tui.engine.runner import check
from tui.model.scenarios import EXPECTATIONS, SCENARIO_DIR, Action, Scenario, ScenarioError, builtin, find, load, parse
from tui.model.state import Model
from workers.settings import MAX_PREFETCH

BUILTIN = {"burst", "kill-one", "mixed-random", "odd-heavy", "tutorial"}


# ----- the scenarios that ship


def test_every_builtin_scenario_file_loads_under_its_own_name() -> None:
    files = sorted(SCENARIO_DIR.glob("*.json"))
    assert {path.stem for path in files} >= BUILTIN
    scenarios = builtin()
    assert set(scenarios) == {path.stem for path in files}, "a file's name and its 'name' differ"
    for path in files:
        scenario = load(path)
        assert scenario == scenarios[path.stem]
        assert scenario.tasks and all(isinstance(task, str) and task for task in scenario.tasks), path
        assert scenario.description.strip(), f"{path.name} has no description"
        assert set(scenario.expect) <= set(EXPECTATIONS), path
        assert [a.at for a in scenario.actions] == sorted(a.at for a in scenario.actions), path


def test_the_builtin_workloads_are_the_ones_their_descriptions_promise() -> None:
    scenarios = builtin()
    assert scenarios["tutorial"].tasks == TUTORIAL
    assert scenarios["odd-heavy"].tasks == ODD_HEAVY * 2
    assert scenarios["burst"].tasks == ("quick task",) * 500
    assert len(scenarios["mixed-random"].tasks) == 40
    kill_one = scenarios["kill-one"]
    assert kill_one.tasks == ("Task...",) * 10
    assert kill_one.actions == (Action(1.5, "kill", "w2"),)
    assert kill_one.expect == {"redelivered_at_least": 1, "lost": 0, "all_done": True}


# ----- malformed files: one sentence each

BASE: dict[str, Any] = {"name": "bad", "tasks": ["Task."]}

MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("no tasks", {"name": "bad"}, "needs a non-empty list of task strings under 'tasks'"),
    ("empty tasks", {"tasks": []}, "needs a non-empty list of task strings"),
    ("tasks not strings", {"tasks": ["a", 2]}, "needs a non-empty list of task strings"),
    ("repeat zero", {**BASE, "repeat": 0}, "'repeat' must be a whole number from 1 to 1000000"),
    ("repeat text", {**BASE, "repeat": "5"}, "'repeat' must be a whole number"),
    ("repeat fraction", {**BASE, "repeat": 2.5}, "'repeat' must be a whole number"),
    ("repeat true", {**BASE, "repeat": True}, "'repeat' must be a whole number"),
    ("actions not a list", {**BASE, "actions": {"at": 1, "do": "kill"}}, "'actions' is a list"),
    ("action not an object", {**BASE, "actions": ["kill w1"]}, "each action is an object"),
    ("bad do", {**BASE, "actions": [{"at": 1, "do": "explode"}]}, "'do' must be one of kill, stop, start"),
    ("no at", {**BASE, "actions": [{"do": "start"}]}, "an action's 'at' must be seconds (0 or more)"),
    ("negative at", {**BASE, "actions": [{"at": -1, "do": "start"}]}, "'at' must be seconds"),
    ("kill without worker", {**BASE, "actions": [{"at": 1, "do": "kill"}]}, "a kill action names its 'worker'"),
    ("stop without worker", {**BASE, "actions": [{"at": 1, "do": "stop"}]}, "a stop action names its 'worker'"),
    (
        "prefetch out of range",
        {**BASE, "actions": [{"at": 1, "do": "prefetch", "value": MAX_PREFETCH + 1}]},
        f"a prefetch action needs a 'value' from 0 to {MAX_PREFETCH}",
    ),
    ("prefetch negative", {**BASE, "actions": [{"at": 1, "do": "prefetch", "value": -1}]}, "needs a 'value' from 0"),
    ("prefetch missing", {**BASE, "actions": [{"at": 1, "do": "prefetch"}]}, "needs a 'value' from 0"),
    ("prefetch true", {**BASE, "actions": [{"at": 1, "do": "prefetch", "value": True}]}, "needs a 'value' from 0"),
    ("bad ack", {**BASE, "actions": [{"at": 1, "do": "ack", "value": "maybe"}]}, "manual, auto or none"),
    ("unknown expect key", {**BASE, "expect": {"lost_at_most": 0}}, "'expect' keys are all_done, lost,"),
    ("expect not an object", {**BASE, "expect": ["lost"]}, "'expect' keys are"),
    ("all_done not a bool", {**BASE, "expect": {"all_done": "yes"}}, "'all_done' is true or false"),
    ("lost not a number", {**BASE, "expect": {"lost": None}}, "'lost' is a whole number (0 or more)"),
    ("negative expectation", {**BASE, "expect": {"redelivered_at_least": -1}}, "is a whole number (0 or more)"),
    ("generate not an object", {"generate": 5}, "'generate' is an object"),
    ("generate text", {"generate": {"count": "many"}}, "'generate' values are whole numbers"),
    ("generate range", {"generate": {"min_dots": 3, "max_dots": 1}}, "0 <= min_dots <= max_dots"),
    ("generate no tasks", {"generate": {"count": 0}}, "'generate' needs 1 <= count"),
    ("not an object", ["Task."], "a scenario is a JSON object"),  # type: ignore[list-item]
]


def one_sentence(error: ScenarioError, where: str) -> str:
    message = str(error)
    assert "\n" not in message, message
    assert message.startswith(f"{where}: ") and message.endswith("."), message
    return message


@pytest.mark.parametrize(("data", "fragment"), [(d, f) for _, d, f in MALFORMED], ids=[i for i, _, _ in MALFORMED])
def test_a_malformed_scenario_is_refused_in_one_sentence(data: Any, fragment: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse(data, "bad.json")
    assert fragment in one_sentence(caught.value, "bad.json")


def test_a_well_formed_scenario_parses_with_actions_in_time_order() -> None:
    scenario = parse(
        {
            "tasks": ["A.", "B.."],
            "repeat": 2,
            "actions": [
                {"at": 3, "do": "ack", "value": "auto"},
                {"at": 0.5, "do": "kill", "worker": "w2"},
                {"at": 2, "do": "prefetch", "value": 1},
                {"at": 1, "do": "start"},
            ],
            "expect": {"all_done": False, "lost_at_least": 1, "duplicates_at_most": 0},
        },
        "fine",
    )
    assert scenario.name == "fine" and scenario.description == ""
    assert scenario.tasks == ("A.", "B..", "A.", "B..")
    assert [a.describe() for a in scenario.actions] == [
        "kill w2 at 0.5s",
        "start at 1s",
        "prefetch 1 at 2s",
        "ack auto at 3s",
    ]
    assert scenario.expect == {"all_done": False, "lost_at_least": 1, "duplicates_at_most": 0}


# ----- generated workloads


def generated(seed: int, **spec: int) -> tuple[str, ...]:
    return parse({"generate": {"seed": seed, "count": 40, "min_dots": 0, "max_dots": 4, **spec}}, "gen").tasks


def test_generate_is_the_same_workload_for_a_seed_and_another_for_another_seed() -> None:
    first = generated(7)
    assert generated(7) == first
    assert generated(8) != first
    assert first == builtin()["mixed-random"].tasks, "mixed-random is seed 7: its workload must not drift"
    assert [task.rstrip(".") for task in first] == [f"Task {n}" for n in range(1, 41)]
    dots = [len(task) - len(task.rstrip(".")) for task in first]
    assert min(dots) == 0 and max(dots) == 4, dots  # the whole range is used, and no more


def test_generate_keeps_to_its_range_and_text() -> None:
    tasks = parse({"generate": {"seed": 1, "count": 5, "min_dots": 2, "max_dots": 2, "text": "Job"}}, "g").tasks
    assert tasks == ("Job 1..", "Job 2..", "Job 3..", "Job 4..", "Job 5..")


# ----- find: by name or by path


def test_find_by_name_and_by_path(tmp_path: Path) -> None:
    assert find("tutorial") == builtin()["tutorial"]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"tasks": ["Mine."], "repeat": 3}), encoding="utf-8")
    mine = find(str(path))
    assert (mine.name, mine.tasks) == ("mine", ("Mine.",) * 3)
    named = tmp_path / "other.json"
    named.write_text(json.dumps({"name": "called-so", "tasks": ["x"]}), encoding="utf-8")
    assert find(str(named)).name == "called-so"


def test_find_explains_an_unknown_name_a_missing_file_and_a_broken_one(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as unknown:
        find("nope")
    message = str(unknown.value)
    assert message.startswith("No scenario 'nope': use one of ") and "\n" not in message
    assert all(name in message for name in BUILTIN)

    with pytest.raises(ScenarioError, match=r"^Cannot read scenario .*absent\.json"):
        find(str(tmp_path / "absent.json"))

    broken = tmp_path / "broken.json"
    broken.write_text('{"tasks": ["a",', encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"^Cannot read scenario .*broken\.json") as caught:
        find(str(broken))
    assert "\n" not in str(caught.value)

    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"tasks": ["a"], "repeat": 0}), encoding="utf-8")
    with pytest.raises(ScenarioError) as refused:
        find(str(invalid))
    assert "'repeat' must be a whole number" in one_sentence(refused.value, "invalid")


# ----- check: each expectation kind against a recorded model

MODELS: dict[str, Callable[[], Recording]] = {
    "round-robin": session_round_robin,  # 5 published, 5 done
    "kill": session_kill,  # 4 done, 2 redeliveries, nothing lost
    "auto-ack loss": session_auto_ack_loss,  # 5 published, 2 done, 3 lost
    "duplicate": session_duplicate,  # 1 done twice after a redelivery
}


def model_of(session: str) -> Model:
    return replay(MODELS[session]().events)


def test_the_recorded_models_have_the_figures_the_checks_rely_on() -> None:
    figures = {}
    for session in MODELS:
        ledger = model_of(session).ledger
        figures[session] = (ledger.confirmed, ledger.done_messages, ledger.redeliveries, ledger.lost, ledger.duplicates)
    assert figures == {
        "round-robin": (5, 5, 0, 0, 0),
        "kill": (4, 4, 2, 0, 0),
        "auto-ack loss": (5, 2, 0, 3, 0),
        "duplicate": (1, 1, 1, 0, 1),
    }


CHECKS: list[tuple[str, str, int | bool, int | bool, bool]] = [
    # session, expectation, wanted, actual, ok
    ("round-robin", "all_done", True, True, True),
    ("auto-ack loss", "all_done", True, False, False),
    ("auto-ack loss", "all_done", False, False, True),
    ("kill", "lost", 0, 0, True),
    ("auto-ack loss", "lost", 0, 3, False),
    ("auto-ack loss", "lost", 3, 3, True),
    ("auto-ack loss", "lost", 2, 3, False),  # exactly, not at least
    ("auto-ack loss", "lost_at_least", 1, 3, True),
    ("auto-ack loss", "lost_at_least", 3, 3, True),
    ("auto-ack loss", "lost_at_least", 4, 3, False),
    ("kill", "lost_at_least", 1, 0, False),
    ("kill", "redelivered_at_least", 1, 2, True),
    ("kill", "redelivered_at_least", 2, 2, True),
    ("kill", "redelivered_at_least", 3, 2, False),
    ("round-robin", "redelivered_at_least", 1, 0, False),
    ("duplicate", "duplicates_at_most", 1, 1, True),
    ("duplicate", "duplicates_at_most", 0, 1, False),
    ("kill", "duplicates_at_most", 0, 0, True),
]


@pytest.mark.parametrize(
    ("session", "name", "wanted", "actual", "ok"),
    CHECKS,
    ids=[f"{s}-{n}={w}-{'ok' if ok else 'fails'}" for s, n, w, _, ok in CHECKS],
)
def test_check_judges_each_expectation(
    session: str, name: str, wanted: int | bool, actual: int | bool, ok: bool
) -> None:
    scenario = Scenario(session, "", ("x",), expect={name: wanted})
    (result,) = check(scenario, model_of(session))
    assert (result.name, result.wanted, result.actual, result.ok) == (name, wanted, actual, ok)
    described = result.describe()
    assert described.startswith(EXPECTATIONS[name]) and described.endswith("(ok)" if ok else "(FAILED)"), described


def test_check_reports_every_expectation_in_the_files_order() -> None:
    kill_one = builtin()["kill-one"]
    results = check(kill_one, model_of("kill"))
    assert [(c.name, c.ok) for c in results] == [("redelivered_at_least", True), ("lost", True), ("all_done", True)]
    results = check(kill_one, model_of("auto-ack loss"))
    assert [(c.name, c.ok) for c in results] == [("redelivered_at_least", False), ("lost", False), ("all_done", False)]
    assert check(builtin()["tutorial"], model_of("kill")) == []  # no expectations, nothing to judge
