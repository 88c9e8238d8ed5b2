"""Provides named workloads, stored as data (tui/model/scenarios/*.json): tasks, timed actions, expectations.

A scenario file::

    {"name": "kill-one", "description": "...",
     "tasks": ["Task...", "Task."], "repeat": 5,
     "actions": [{"at": 2.0, "do": "kill", "worker": "w2"}, {"at": 4, "do": "prefetch", "value": 1}],
     "expect": {"redelivered_at_least": 1, "lost": 0, "all_done": true}}

The same file runs in the dashboard (its tasks, as a preset) and headless
(``dispatch-lab compare`` runs tasks and actions, then checks expectations).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeGuard

from workers.settings import ACK_MODES, MAX_PREFETCH

SCENARIO_DIR = Path(__file__).with_name("scenarios")


class Do(str, Enum):
    """What a scenario's timed action does to the running lab (its ``do`` in the JSON)."""

    KILL = "kill"
    STOP = "stop"
    START = "start"
    PREFETCH = "prefetch"
    ACK = "ack"
    RESTART_BROKER = "restart_broker"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def names_a_worker(self) -> bool:
        """The action is aimed at one worker, named in ``worker``."""
        return self in (Do.KILL, Do.STOP)


ACTIONS = tuple(do.value for do in Do)
"""``restart_broker`` needs a private broker: headless runs handed a LocalNode carry it out."""
EXPECTATIONS = {
    "all_done": "every published task finished",
    "lost": "lost tasks",
    "lost_at_least": "at least this many lost",
    "redelivered_at_least": "at least this many redeliveries",
    "duplicates_at_most": "at most this many duplicates",
}


class ScenarioError(ValueError):
    """A scenario file is missing or malformed; the message is one sentence."""


@dataclass(frozen=True)
class Action:
    """Something done to the running lab at ``at`` seconds after publishing starts."""

    at: float
    do: Do
    worker: str | None = None
    value: int | str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "do", Do(self.do))  # "kill" as written in JSON or a test is Do.KILL

    def describe(self) -> str:
        target = f" {self.worker}" if self.worker else ""
        value = f" {self.value}" if self.value is not None else ""
        return f"{self.do}{target}{value} at {self.at:g}s"


@dataclass(frozen=True)
class Scenario:
    """A named list of task bodies, in publishing order, with optional actions and expectations."""

    name: str
    description: str
    tasks: tuple[str, ...]
    actions: tuple[Action, ...] = ()
    expect: dict[str, int | bool] = field(default_factory=dict)


def _whole(value: Any) -> TypeGuard[int]:
    """An int from JSON, but not true or false (bool is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _action(raw: Any, where: str) -> Action:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: each action is an object like {{'at': 2, 'do': 'kill', 'worker': 'w1'}}.")
    at, do = raw.get("at"), raw.get("do")
    if not isinstance(at, (int, float)) or isinstance(at, bool) or at < 0:
        raise ScenarioError(f"{where}: an action's 'at' must be seconds (0 or more).")
    if do not in ACTIONS:
        raise ScenarioError(f"{where}: 'do' must be one of {', '.join(ACTIONS)}, not {do!r}.")
    worker, value = raw.get("worker"), raw.get("value")
    do = Do(do)
    if do.names_a_worker and not isinstance(worker, str):
        raise ScenarioError(f"{where}: a {do} action names its 'worker' (w1, w2, ...).")
    if do is Do.PREFETCH and not (_whole(value) and 0 <= value <= MAX_PREFETCH):
        raise ScenarioError(f"{where}: a prefetch action needs a 'value' from 0 to {MAX_PREFETCH}.")
    if do is Do.ACK and value not in ACK_MODES:
        raise ScenarioError(f"{where}: an ack action needs a 'value' of manual, auto or none.")
    return Action(float(at), do, worker if isinstance(worker, str) else None, value)


def parse(data: Any, where: str) -> Scenario:
    """A scenario from its JSON data; ``where`` names it in errors."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: a scenario is a JSON object.")
    tasks, repeat = data.get("tasks"), data.get("repeat", 1)
    if "generate" in data:
        tasks = _generate(data["generate"], where)
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise ScenarioError(f"{where}: needs a non-empty list of task strings under 'tasks'.")
    if not _whole(repeat) or not 1 <= repeat <= 1_000_000:
        raise ScenarioError(f"{where}: 'repeat' must be a whole number from 1 to 1000000.")
    raw_actions = data.get("actions", [])
    if not isinstance(raw_actions, list):
        raise ScenarioError(f"{where}: 'actions' is a list.")
    expect = data.get("expect", {})
    if not isinstance(expect, dict) or any(key not in EXPECTATIONS for key in expect):
        raise ScenarioError(f"{where}: 'expect' keys are {', '.join(EXPECTATIONS)}.")
    # Checked here, not when the run is over: a bad value would only fail (or crash the check) after all the work.
    for key, wanted in expect.items():
        if key == "all_done" and not isinstance(wanted, bool):
            raise ScenarioError(f"{where}: 'all_done' is true or false, not {wanted!r}.")
        if key != "all_done" and not (_whole(wanted) and wanted >= 0):
            raise ScenarioError(f"{where}: {key!r} is a whole number (0 or more), not {wanted!r}.")
    actions = tuple(sorted((_action(a, where) for a in raw_actions), key=lambda a: a.at))
    return Scenario(
        str(data.get("name") or where), str(data.get("description") or ""), tuple(tasks) * repeat, actions, expect
    )


def _generate(spec: Any, where: str) -> list[str]:
    """Seeded random tasks: the same seed gives the same workload on every machine."""
    if not isinstance(spec, dict):
        raise ScenarioError(f"{where}: 'generate' is an object with seed, count, min_dots, max_dots.")
    try:
        seed, count = int(spec.get("seed", 1)), int(spec.get("count", 20))
        low, high = int(spec.get("min_dots", 0)), int(spec.get("max_dots", 3))
    except (TypeError, ValueError):
        raise ScenarioError(f"{where}: 'generate' values are whole numbers.") from None
    if not (1 <= count <= 1_000_000 and 0 <= low <= high <= 10_000):
        raise ScenarioError(f"{where}: 'generate' needs 1 <= count and 0 <= min_dots <= max_dots.")
    rng = random.Random(seed)
    text = str(spec.get("text", "Task"))
    return [f"{text} {n + 1}" + "." * rng.randint(low, high) for n in range(count)]


def load(path: Path) -> Scenario:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"Cannot read scenario {path}: {exc}") from None
    return parse(data, path.stem)


def builtin() -> dict[str, Scenario]:
    """The scenarios that ship with dispatch-lab, by name."""
    found = {}
    for path in sorted(SCENARIO_DIR.glob("*.json")):
        scenario = load(path)
        found[scenario.name] = scenario
    return found


def find(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a scenario file by path."""
    known = builtin()
    if name_or_path in known:
        return known[name_or_path]
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        return load(path)
    raise ScenarioError(f"No scenario {name_or_path!r}: use one of {', '.join(known)} or a .json file.")
