"""The timeline's layout as numbers: labels that would collide take rows of their own, nothing runs off the plot."""

from __future__ import annotations

from lab.report.timeline import LANES, MAX_LABEL, WIDTH, Item, Lane, Timeline, lay_out


def _lane(timeline: Timeline, name: str) -> Lane:
    return next(lane for lane in timeline.lanes if lane.name == name)


def test_marks_at_the_same_moment_get_label_rows_of_their_own() -> None:
    items = [Item("PSCI", 5.0, None, "PSCI_VERSION → v1.3", ""),
             Item("PSCI", 5.01, None, "SYSTEM_OFF2 → power-off", ""),
             Item("QMP", 5.0, None, "SHUTDOWN", "")]
    timeline = lay_out(items, {"boot1": 1.0}, 20.0)
    psci, qmp = _lane(timeline, "PSCI"), _lane(timeline, "QMP")
    assert [lane.name for lane in timeline.lanes] == list(LANES)
    assert len({placed.label.y for placed in psci.items}) == 2
    assert psci.height > qmp.height
    assert all(placed.mark is not None and placed.bar is None for placed in psci.items)
    assert qmp.y + qmp.height == psci.y, "lanes are stacked without gaps"


def test_labels_near_the_right_edge_turn_left_and_long_ones_are_cut() -> None:
    long_label = "x" * (MAX_LABEL + 10)
    timeline = lay_out([Item("QMP", 19.9, None, long_label, "the whole detail")], {}, 20.0)
    (placed,) = _lane(timeline, "QMP").items
    assert placed.label.anchor == "end" and placed.label.x < placed.mark.x
    assert placed.label.text.endswith("…") and len(placed.label.text) == MAX_LABEL
    assert placed.detail == "the whole detail"


def test_bars_span_their_time_and_ticks_cover_the_run() -> None:
    timeline = lay_out([Item("steps", 0.0, 0.001, "mark", ""), Item("steps", 10.0, 40.0, "hibernate", "")],
                       {"boot1": 2.0, "boot2": 30.0}, 44.0)
    short, long = (placed.bar for placed in _lane(timeline, "steps").items)
    assert short is not None and short.width == 2, "a bar too short to see is drawn 2 px wide"
    assert long is not None and long.x + long.width <= timeline.plot_right
    assert [tick.label for tick in timeline.ticks] == [f"{s}s" for s in range(0, 45, 5)]
    assert timeline.ticks[-1].x <= timeline.plot_right <= timeline.width == WIDTH
    assert [launch.boot for launch in timeline.launches] == ["boot1", "boot2"]
    assert timeline.launches[0].x < timeline.launches[1].x
