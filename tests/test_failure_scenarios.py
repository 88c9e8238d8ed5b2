"""The failure scenarios (poison, nack-loop, ack-timeout): their files, and headless runs meeting their expectations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import run_module
from tui.engine.runner import ScenarioRun
from tui.model.scenarios import Do, ScenarioError, builtin, parse
from workers import local_node
from workers.settings import DispatchMode, FailMode, QueueSpec, QueueType


def test_the_scenarios_say_their_queue_failure_mode_and_broker() -> None:
    found = builtin()
    poison, loop, timeout = found["poison"], found["nack-loop"], found["ack-timeout"]
    assert poison.queue == QueueSpec(True, QueueType.QUORUM, 3, True) and poison.on_fail is FailMode.REQUEUE
    assert sum("!" in task for task in poison.tasks) == 1 and len(poison.tasks) == 10
    assert loop.queue is not None and loop.queue.type is QueueType.CLASSIC
    assert [(a.do, a.value) for a in loop.actions] == [(Do.ON_FAIL, "reject")]
    assert timeout.private_broker and timeout.ack_timeout == 3.0 and timeout.run_for is not None


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"queue": {"type": "stream"}}, "--queue-type must be one of"),
        ({"queue": {"type": "classic", "delivery_limit": 3}}, "needs --queue-type quorum"),
        ({"queue": {"kind": "quorum"}}, "'queue' is an object"),
        ({"on_fail": "explode"}, "--on-fail must be one of"),
        ({"ack_timeout": 0}, "--ack-timeout must be between"),
        ({"broker": "shared"}, "'broker' is 'private'"),
        ({"run_for": -1}, "'run_for' is seconds"),
        ({"actions": [{"at": 1, "do": "on_fail", "value": "ignore"}]}, "an on_fail action needs"),
        ({"expect": {"good_all_done": 1}}, "'good_all_done' is true or false"),
    ],
)
def test_a_bad_failure_setting_in_a_scenario_is_one_sentence(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ScenarioError) as refused:
        parse({"tasks": ["a"], **data}, "bad")
    assert words in str(refused.value) and str(refused.value).startswith("bad: ")


@pytest.mark.timeout(120)
def test_compare_poison_reports_dead_letters_delivery_counts_and_the_good_tasks_held_up(broker_url: str) -> None:
    result = run_module("tui.cli", ["compare", "--scenario", "poison", "--modes", "1,10", "--json"], broker_url, 120)
    assert result.code == 0, result.output
    runs = json.loads(result.stdout)["results"]
    assert [run["prefetch"] for run in runs] == [1, 10]
    for run in runs:
        assert all(check["ok"] for check in run["checks"]), run["checks"]
        assert (run["dead_lettered"], run["dead_letter_queue"], run["max_delivery_count"]) == (1, 1, 3)
        assert run["failures"] == 4 and run["redeliveries"] >= 3
        # The broker really delivered it 4 times (x-delivery-count 0..3) before it dead-lettered it.
        assert run["bad_tasks"] == [{"task": "r1#4", "deliveries": 4, "failures": 4, "state": "dead-lettered"}]
        assert run["good_dead_lettered"] == [] and run["queue"] == "quorum, limit 3, DLX"
        assert run["delivery_limit"] == 3 and run["broker_version"]
    # Fair dispatch holds nothing behind it; a window of 10 does.
    assert runs[0]["good_delayed"] == []
    assert runs[1]["good_delayed"] and all(d["behind"] == "r1#4" for d in runs[1]["good_delayed"])


@pytest.mark.timeout(120)
def test_nack_loop_loops_until_the_fix_rejects_it_into_the_dead_letter_queue(broker_url: str) -> None:
    scenario = builtin()["nack-loop"]
    result = ScenarioRun(broker_url, scenario, mode=DispatchMode(1, "manual"), seconds_per_dot=0.05).run()
    assert all(check.ok for check in result.checks), [c.describe() for c in result.checks]
    figures = result.failures()
    assert figures["rejected"] == 1 and figures["dead_letter_queue"] == 1
    assert figures["requeued"] == figures["failures"] - 1 >= 20  # type: ignore[operator]
    assert figures["loop_peak_per_s"] >= 10  # type: ignore[operator]
    [bad] = figures["bad_tasks"]  # type: ignore[misc]
    assert bad["state"] == "dead-lettered"
    record = next(r for r in result.model.ledger.records.values() if r.bad)
    assert record.lifeline().startswith("r1#1 -> w")  # a scenario is a run: its tasks are numbered from 1
    assert record.lifeline().endswith("failed -> rejected -> dead-lettered (rejected)")


@pytest.mark.timeout(120)
def test_ack_timeout_runs_on_a_private_node_and_takes_the_long_task_back() -> None:
    if local_node.rabbitmq_server_path() is None:
        pytest.skip("rabbitmq-server is not installed")
    result = run_module("tui.cli", ["compare", "--scenario", "ack-timeout", "--modes", "1", "--json"], None, 120)
    assert result.code == 0, result.output
    [run] = json.loads(result.stdout)["results"]
    assert all(check["ok"] for check in run["checks"]), run["checks"]
    assert run["ack_lost"] >= 1 and run["done"] == 4 and not run["timed_out"]
