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

from workers.settings import (
    ACK_MODES,
    FAIL_MODES,
    MAX_PREFETCH,
    FailMode,
    QueueSpec,
    SettingsError,
    check_ack_timeout,
    check_fail,
    check_queue_type,
)

SCENARIO_DIR = Path(__file__).with_name("scenarios")


class Do(str, Enum):
    """What a scenario's timed action does to the running lab (its ``do`` in the JSON)."""

    KILL = "kill"
    STOP = "stop"
    START = "start"
    PREFETCH = "prefetch"
    ACK = "ack"
    RESTART_BROKER = "restart_broker"
    ON_FAIL = "on_fail"

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
    "failures_at_least": "at least this many failed runs",
    "dead_lettered": "tasks dead-lettered",
    "good_dead_lettered": "good tasks dead-lettered with the bad one",
    "good_all_done": "every task without '!' finished",
    "max_delivery_count": "the largest x-delivery-count",
    "ack_lost_at_least": "at least this many finished after an ack timeout (ack lost)",
    "done_at_least": "at least this many tasks finished",
}
EXACT = frozenset({"all_done", "lost", "dead_lettered", "good_dead_lettered", "good_all_done", "max_delivery_count"})
"""Expectations met only by their exact value (the others are at least or at most, as their names say)."""
_BOOLEAN = frozenset({"all_done", "good_all_done"})


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
    queue: QueueSpec | None = None
    """How its queue is declared (quorum, a delivery limit, dead letters); None: the tutorial's classic queue."""
    on_fail: FailMode | None = None
    """What the workers do with a failing task; None: the default (requeue)."""
    private_broker: bool = False
    """It needs a broker of its own (a private node): its settings differ from a shared broker's."""
    ack_timeout: float | None = None
    """The private node's consumer_timeout in seconds."""
    run_for: float | None = None
    """Seconds after which the run ends and is checked, for work that never settles (a task past the ack timeout)."""


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
    if do is Do.ON_FAIL and value not in FAIL_MODES:
        raise ScenarioError(f"{where}: an on_fail action needs a 'value' of requeue, reject or crash.")
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
        if key in _BOOLEAN and not isinstance(wanted, bool):
            raise ScenarioError(f"{where}: {key!r} is true or false, not {wanted!r}.")
        if key not in _BOOLEAN and not (_whole(wanted) and wanted >= 0):
            raise ScenarioError(f"{where}: {key!r} is a whole number (0 or more), not {wanted!r}.")
    actions = tuple(sorted((_action(a, where) for a in raw_actions), key=lambda a: a.at))
    return Scenario(
        str(data.get("name") or where), str(data.get("description") or ""), tuple(tasks) * repeat, actions, expect,
        *_broker_side(data, where),
    )  # fmt: skip


def _broker_side(
    data: dict[str, Any], where: str
) -> tuple[QueueSpec | None, FailMode | None, bool, float | None, float | None]:
    """The queue, failure mode, broker and run length a scenario asks for (every key optional)."""
    queue, on_fail, timeout, run_for = (
        data.get("queue"),
        data.get("on_fail"),
        data.get("ack_timeout"),
        data.get("run_for"),
    )
    spec = None
    try:
        if queue is not None:
            if not isinstance(queue, dict) or any(k not in ("type", "delivery_limit", "dead_letter") for k in queue):
                raise ScenarioError(f"{where}: 'queue' is an object with type, delivery_limit and dead_letter.")
            limit = queue.get("delivery_limit")
            if limit is not None and not _whole(limit):
                raise ScenarioError(f"{where}: 'delivery_limit' is a whole number.")
            spec = QueueSpec(
                True, check_queue_type(str(queue.get("type", "classic"))), limit, queue.get("dead_letter") is True
            )
        fail = None if on_fail is None else check_fail(str(on_fail))
        if timeout is not None:
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
                raise ScenarioError(f"{where}: 'ack_timeout' is seconds.")
            timeout = check_ack_timeout(float(timeout))
    except SettingsError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    private = data.get("broker") == "private" or timeout is not None
    if "broker" in data and data["broker"] not in ("private", "any"):
        raise ScenarioError(f"{where}: 'broker' is 'private' (a node of its own) or 'any'.")
    if run_for is not None and not (
        isinstance(run_for, (int, float)) and not isinstance(run_for, bool) and run_for > 0
    ):
        raise ScenarioError(f"{where}: 'run_for' is seconds (more than 0).")
    return spec, fail, private, timeout, None if run_for is None else float(run_for)


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


LESSON_ORDER = ("tutorial", "odd-heavy", "kill-one", "burst", "mixed-random", "nack-loop", "poison", "ack-timeout")
"""The built-in scenarios in the order a lesson meets them: the tutorial's first, so their buttons and keys
(Alt+1, Alt+2, ...) come first where a narrow screen shows only a few; any other after them, by name."""


def builtin() -> dict[str, Scenario]:
    """The scenarios that ship with dispatch-lab, by name, in LESSON_ORDER."""
    found = {}
    for path in sorted(SCENARIO_DIR.glob("*.json")):
        scenario = load(path)
        found[scenario.name] = scenario
    rank = {name: index for index, name in enumerate(LESSON_ORDER)}
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def find(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a scenario file by path."""
    known = builtin()
    if name_or_path in known:
        return known[name_or_path]
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        return load(path)
    raise ScenarioError(f"No scenario {name_or_path!r}: use one of {', '.join(known)} or a .json file.")
