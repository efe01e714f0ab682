"""Endurance rounds: awake delays from a minimum to a maximum in steps, and stopping after N failed rounds."""

import pytest

from lab.judge.observations import BootObservation, Observations
from lab.scenario.endurance import AwakeDelays, run_rounds


def test_awake_delays_climb_in_steps_then_start_again():
    delays = AwakeDelays.from_params({"min": 1, "max": 4, "step": 1.5})
    assert [delays.delay(n) for n in range(1, 6)] == [1.0, 2.5, 4.0, 1.0, 2.5]
    assert [AwakeDelays.from_params({"min": 3}).delay(n) for n in (1, 2)] == [3.0, 3.0]
    assert AwakeDelays.from_params(None) is None


def _rounds(outcomes: list[str], **params):
    """Run rounds whose boot comes up as `outcomes` say, each expected resumed; returns cycles, stop, delays."""
    observations = Observations()
    waited: list[float] = []

    def one_round(number: int, _awake: float) -> None:
        observations.boots.append(BootObservation(f"boot{number}", outcomes[number - 1], "resumed", 7,
                                                 hibernate_command_status=0))

    cycles, stopped = run_rounds({"times": len(outcomes), **params}, observations, waited.append, one_round)
    return cycles, stopped, waited


def test_each_round_is_a_cycle_with_its_delay_boots_and_verdict():
    cycles, stopped, waited = _rounds(["resumed", "fresh", "resumed"], awake={"min": 0, "max": 10, "step": 5})
    assert stopped is None and waited == [0.0, 5.0, 10.0]
    assert [(c.round, c.boots, c.passed) for c in cycles] == [(1, ["boot1"], True), (2, ["boot2"], False),
                                                            (3, ["boot3"], True)]
    assert cycles[1].failed == ["boot2 came up resumed: boot2 came up fresh, expected resumed"]


@pytest.mark.parametrize(("outcomes", "stop_after", "rounds_run"), [
    (["fresh", "resumed", "fresh", "fresh", "resumed"], 2, 4),
    (["fresh", "resumed", "fresh", "resumed", "fresh"], 2, 5),
    (["fresh", "fresh", "fresh"], 1, 1),
])
def test_a_repeat_stops_after_n_failed_rounds_in_a_row(outcomes, stop_after, rounds_run):
    cycles, stopped, _ = _rounds(outcomes, stop_after_failures=stop_after)
    assert len(cycles) == rounds_run
    assert stopped == (rounds_run if rounds_run < len(outcomes) else None)
