from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.scenario.model import find_scenario, load_scenario, shipped_scenarios


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def test_every_shipped_scenario_is_valid_and_found_by_its_name():
    paths = shipped_scenarios()
    assert paths
    for path in paths:
        assert find_scenario(load_scenario(path).name).path == path


def test_shorthand_steps_and_repeat_are_parsed(tmp_path):
    scenario = load_scenario(_write(tmp_path, """\
name: demo
description: demo
steps:
  - boot
  - mark
  - repeat:
      times: 2
      steps:
        - hibernate: {expect: hibernate-off}
        - boot: {expect: resumed}
"""))
    assert [s.kind for s in scenario.steps] == ["boot", "mark", "repeat"]
    assert [s.kind for s in scenario.steps[2].children] == ["hibernate", "boot"]
    assert scenario.steps[2].children[0].params == {"expect": "hibernate-off"}
    assert scenario.psci == "kvm"


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ("  - boot\n  - hibernate: {expect: hibernate-of2}\n", 5, "steps/1/hibernate/expect"),
        ("  - boot\n  - hibernat: {}\n", 5, "'hibernat' was unexpected"),
        ("  - boot\n  - alter-signature: {}\n", 5, "'value' is a required property"),
        ("  - boot: {timeout: -1}\n", 4, "steps/0/boot/timeout"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, body, line, fragment):
    path = _write(tmp_path, "name: demo\ndescription: demo\nsteps:\n" + body)
    with pytest.raises(UsageError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert fragment in message


def test_bad_yaml_and_missing_scenario_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match=r"scenario.yaml:2: not valid YAML"):
        load_scenario(_write(tmp_path, "name: demo\n  bad: [\n"))
    with pytest.raises(UsageError, match="no scenario named 'nope'"):
        find_scenario("nope")


def test_a_scenario_may_set_its_kernel_trouble_quiet_time(tmp_path):
    body = "name: demo\ndescription: demo\nsteps:\n  - boot\n"
    assert load_scenario(_write(tmp_path, body)).kernel_trouble_quiet is None
    assert load_scenario(_write(tmp_path, "kernel_trouble_quiet: 12.5\n" + body)).kernel_trouble_quiet == 12.5
    with pytest.raises(UsageError, match="kernel_trouble_quiet"):
        load_scenario(_write(tmp_path, "kernel_trouble_quiet: 0\n" + body))
