"""Provides named workloads, stored as data in tui/scenarios/*.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SCENARIO_DIR = Path(__file__).with_name("scenarios")


class ScenarioError(ValueError):
    """A scenario file is missing or malformed; the message is one sentence."""


@dataclass(frozen=True)
class Scenario:
    """A named list of task bodies, in publishing order."""

    name: str
    description: str
    tasks: tuple[str, ...]


def load(path: Path) -> Scenario:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"Cannot read scenario {path}: {exc}") from None
    tasks = data.get("tasks") if isinstance(data, dict) else None
    repeat = data.get("repeat", 1) if isinstance(data, dict) else 1
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks) or not tasks:
        raise ScenarioError(f"Scenario {path} needs a non-empty list of task strings under 'tasks'.")
    if not isinstance(repeat, int) or not 1 <= repeat <= 1_000_000:
        raise ScenarioError(f"Scenario {path}: 'repeat' must be a whole number from 1 to 1000000.")
    return Scenario(str(data.get("name") or path.stem), str(data.get("description") or ""), tuple(tasks) * repeat)


def builtin() -> dict[str, Scenario]:
    """The scenarios that ship with dispatch-lab, by name."""
    found = {}
    for path in sorted(SCENARIO_DIR.glob("*.json")):
        scenario = load(path)
        found[scenario.name] = scenario
    return found
