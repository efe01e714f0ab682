"""The Vagrantfile and the nightly systemd units: syntax, and that they do what docs/nightly-lab.md says."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.paths import REPO_ROOT

VAGRANTFILE = REPO_ROOT / "Vagrantfile"
UNIT_DIR = REPO_ROOT / "images/host"
SERVICE = UNIT_DIR / "hibernation-lab-nightly.service"
TIMER = UNIT_DIR / "hibernation-lab-nightly.timer"
LAB_DIR = "/opt/hibernation-lab"
RUNS_DIR = "/var/lib/hibernation-lab/runs"

needs_ruby = pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed (apt-get install ruby)")

RECORDING_VAGRANT = """
require "json"

class Recorder
  def initialize(log, path)
    @log = log
    @path = path
  end

  def method_missing(name, *args, **options)
    @log << { "path" => @path, "name" => name.to_s, "args" => args, "options" => options }
    child = Recorder.new(@log, "#{@path}.#{name}")
    yield child if block_given?
    child
  end

  def respond_to_missing?(_name, _include_private = false)
    true
  end
end

module Vagrant
  def self.configure(_version)
    log = []
    yield Recorder.new(log, "config")
    puts JSON.generate(log)
  end
end

load ARGV.fetch(0)
"""


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read_string(path.read_text(), source=str(path))
    return parser


def _vagrant_calls(tmp_path: Path, env: dict[str, str]) -> list[dict]:
    """What the Vagrantfile asks of Vagrant, recorded by a stand-in `Vagrant` module."""
    recorder = tmp_path / "recording_vagrant.rb"
    recorder.write_text(RECORDING_VAGRANT)
    done = subprocess.run(["ruby", str(recorder), str(VAGRANTFILE)], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _assigned(calls: list[dict], setting: str) -> list:
    return [call["args"][0] for call in calls if call["name"] == f"{setting}="]


@needs_ruby
def test_vagrantfile_syntax() -> None:
    done = subprocess.run(["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Syntax OK" in done.stdout


@needs_ruby
def test_vagrantfile_provisions_with_bootstrap_and_installs_the_units(tmp_path: Path) -> None:
    calls = _vagrant_calls(tmp_path, {})
    assert _assigned(calls, "box") == ["debian/bookworm64"]
    assert _assigned(calls, "cpus") == [2]
    assert _assigned(calls, "memory") == [4096]
    assert _assigned(calls, "nested") == [True]
    assert _assigned(calls, "cpu_mode") == ["host-passthrough"]
    assert any(call["name"] == "provider" and call["args"] == ["libvirt"] for call in calls)
    synced = [call for call in calls if call["name"] == "synced_folder" and call["args"] == [".", LAB_DIR]]
    assert len(synced) == 1
    (provision,) = [call for call in calls if call["name"] == "provision"]
    assert provision["args"] == ["shell"]
    script = provision["options"]["inline"]
    assert f"cd {LAB_DIR}" in script and "./bootstrap" in script
    assert f"install -m 0644 images/host/{SERVICE.name} images/host/{TIMER.name} /etc/systemd/system/" in script
    assert f"systemctl enable --now {TIMER.name}" in script


@needs_ruby
def test_vagrantfile_size_and_driver_come_from_the_environment(tmp_path: Path) -> None:
    calls = _vagrant_calls(tmp_path, {"LAB_VM_CPUS": "4", "LAB_VM_MEMORY_MIB": "8192", "LAB_VM_DRIVER": "qemu"})
    assert _assigned(calls, "cpus") == [4]
    assert _assigned(calls, "memory") == [8192]
    assert _assigned(calls, "driver") == ["qemu"]
    assert _assigned(calls, "nested") == []


def test_vagrantfile_names_the_shipped_units() -> None:
    text = VAGRANTFILE.read_text()
    assert "./bootstrap" in text
    for unit in (SERVICE, TIMER):
        assert unit.name in text and unit.exists()


def test_service_runs_every_scenario_with_the_lab_and_keeps_30_days() -> None:
    unit = _unit(SERVICE)
    assert {"Unit", "Service"} <= set(unit.sections())
    service = unit["Service"]
    assert service["Type"] == "oneshot"
    exec_start = service["ExecStart"]
    assert f"{LAB_DIR}/.venv/bin/lab scenario list" in exec_start
    assert "for name in hibernate-resume " in exec_start
    assert f'{LAB_DIR}/.venv/bin/lab scenario "$$name" --runs-dir {RUNS_DIR}' in exec_start
    assert service["ExecStopPost"].startswith(f"-/usr/bin/find {RUNS_DIR} ")
    assert "-mtime +30" in service["ExecStopPost"]


def test_timer_fires_at_two_and_catches_up() -> None:
    unit = _unit(TIMER)
    assert unit["Timer"]["OnCalendar"] == "*-*-* 02:00:00"
    assert unit["Timer"]["Persistent"] == "true"
    assert unit["Timer"]["Unit"] == SERVICE.name
    assert unit["Install"]["WantedBy"] == "timers.target"


def _verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    known_good = tmp_path / "lab-known-good.service"
    known_good.write_text("[Unit]\nDescription=check\n\n[Service]\nType=oneshot\nExecStart=/bin/true\n")
    if _verify([known_good]).returncode != 0:
        pytest.skip("systemd-analyze verify is not usable in this container")
    copies = []
    for unit in (SERVICE, TIMER):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(LAB_DIR, str(REPO_ROOT)))
        copies.append(copy)
    done = _verify(copies)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""
