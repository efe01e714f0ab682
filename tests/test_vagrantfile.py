"""The Vagrantfile and the nightly systemd units do what docs/nightly-lab.md says, run against stand-ins.

The Vagrantfile is evaluated by Ruby with a recording `Vagrant`, and its provisioning script is run by bash
with bootstrap, install and systemctl replaced by recorders; the service's commands run with a stand-in lab.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.paths import REPO_ROOT
from lab.scenario.model import shipped_scenarios

VAGRANTFILE = REPO_ROOT / "Vagrantfile"
UNIT_DIR = REPO_ROOT / "images/host"
SERVICE = UNIT_DIR / "hibernation-lab-nightly.service"
TIMER = UNIT_DIR / "hibernation-lab-nightly.timer"
RUNS_DIR = "/var/lib/hibernation-lab/runs"

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


def _exec_line(value: str) -> list[str]:
    """An Exec*= value split as systemd does: continuation lines joined, `$$` unescaped, `-` prefix dropped."""
    joined = re.sub(r"\\\n\s*", " ", value).replace("$$", "$")
    return shlex.split(joined.removeprefix("-"))


def _stub(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@dataclass(frozen=True)
class Provisioning:
    """What the Vagrantfile's provisioning script did, run with stand-ins for bootstrap, install, systemctl."""

    status: int
    log: list[list[str]]
    checkout: Path


def _provision(tmp_path: Path, bootstrap_status: int = 0) -> Provisioning:
    calls = _vagrant_calls(tmp_path, {})
    (provision,) = [call for call in calls if call["name"] == "provision"]
    assert provision["args"] == ["shell"]
    synced = [call for call in calls if call["name"] == "synced_folder" and call["args"][0] == "."
              and not call["options"].get("disabled")]
    assert len(synced) == 1, synced
    guest_checkout = synced[0]["args"][1]
    checkout = tmp_path / "checkout"
    shutil.copytree(UNIT_DIR, checkout / UNIT_DIR.relative_to(REPO_ROOT))
    log = tmp_path / "calls.log"
    fields = '"$(basename "$0")" "$PWD" "LAB_CACHE_DIR=${LAB_CACHE_DIR:-}" "$@"'
    record = f'printf "%s\\n" {fields} | paste -sd"\\t" >> {log}'
    _stub(checkout, "bootstrap", f"{record}\nexit {bootstrap_status}")
    stubs = tmp_path / "bin"
    for command in ("install", "systemctl"):
        _stub(stubs, command, record)
    script = tmp_path / "provision.sh"
    script.write_text(provision["options"]["inline"].replace(guest_checkout, str(checkout)))
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{stubs}:/usr/bin:/bin"})
    lines = log.read_text().splitlines() if log.exists() else []
    return Provisioning(done.returncode, [line.split("\t") for line in lines], checkout)


@pytest.mark.needs_ruby
def test_vagrantfile_is_valid_ruby() -> None:
    done = subprocess.run(["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.needs_ruby
def test_vagrantfile_syncs_the_checkout_where_the_service_expects_it(tmp_path: Path) -> None:
    calls = _vagrant_calls(tmp_path, {})
    synced = [call for call in calls if call["name"] == "synced_folder" and not call["options"].get("disabled")]
    assert [call["args"] for call in synced] == [[".", _unit(SERVICE)["Service"]["WorkingDirectory"]]]
    assert any(pattern.startswith(".venv") for pattern in synced[0]["options"]["rsync__exclude"]), \
        "the host's virtualenv must not reach the VM: bootstrap makes the VM its own"


@pytest.mark.needs_ruby
def test_provisioning_bootstraps_the_checkout_then_installs_and_starts_the_timer(tmp_path: Path) -> None:
    done = _provision(tmp_path)
    assert done.status == 0
    (bootstrap, install, reload, enable) = done.log
    cache = _unit(SERVICE)["Service"]["Environment"].split()
    assert bootstrap[:2] == ["bootstrap", str(done.checkout)]
    assert f"LAB_CACHE_DIR={dict(v.split('=', 1) for v in cache)['LAB_CACHE_DIR']}" == bootstrap[2], \
        "bootstrap must build the images where the nightly service looks for them"
    assert install[0] == "install" and install[-1] == "/etc/systemd/system/"
    assert install[3:5] == ["-m", "0644"], "unit files are installed readable and not executable"
    installed = {(done.checkout / source).resolve() for source in install[5:-1]}
    assert installed == {(done.checkout / unit.relative_to(REPO_ROOT)).resolve() for unit in (SERVICE, TIMER)}
    assert reload[0] == "systemctl" and reload[3:] == ["daemon-reload"]
    assert enable[0] == "systemctl" and enable[3:5] == ["enable", "--now"]
    (started,) = enable[5:]
    assert started == TIMER.name and _unit(TIMER)["Timer"]["Unit"] == SERVICE.name


@pytest.mark.needs_ruby
def test_provisioning_stops_when_bootstrap_fails(tmp_path: Path) -> None:
    done = _provision(tmp_path, bootstrap_status=1)
    assert done.status != 0
    assert [call[0] for call in done.log] == ["bootstrap"]


@pytest.mark.needs_ruby
def test_vagrantfile_size_and_driver_come_from_the_environment(tmp_path: Path) -> None:
    default = _vagrant_calls(tmp_path, {})
    assert _assigned(default, "nested") == [True], "the default kvm driver gives the lab nested KVM"
    calls = _vagrant_calls(tmp_path, {"LAB_VM_CPUS": "4", "LAB_VM_MEMORY_MIB": "8192", "LAB_VM_DRIVER": "qemu"})
    assert _assigned(calls, "cpus") == [4]
    assert _assigned(calls, "memory") == [8192]
    assert _assigned(calls, "driver") == ["qemu"]
    assert _assigned(calls, "nested") == []


def _run_service(tmp_path: Path, failing: str = "") -> tuple[int, list[list[str]]]:
    """Run the service's ExecStart with its lab replaced by one that lists the real scenarios and runs none."""
    service = _unit(SERVICE)["Service"]
    checkout = service["WorkingDirectory"]
    log = tmp_path / "ran.log"
    listing = f'exec {sys.executable} -m lab.cli "$@"'
    _stub(tmp_path / ".venv/bin", "lab", f"""if [ "$1 $2" = "scenarios list" ]; then {listing}; fi
echo "$*" >> {log}
[ "$2" != "{failing}" ]""")
    argv = [arg.replace(checkout, str(tmp_path)) for arg in _exec_line(service["ExecStart"])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.stderr == ""
    return done.returncode, [line.split() for line in log.read_text().splitlines()]


def test_service_runs_every_scenario_once_hibernate_resume_first(tmp_path: Path) -> None:
    status, ran = _run_service(tmp_path)
    assert status == 0
    assert ran[0][:2] == ["scenario", "hibernate-resume"]
    assert sorted(run[1] for run in ran) == sorted(path.stem for path in shipped_scenarios())
    assert all(run[2:] == ["--runs-dir", RUNS_DIR] for run in ran)


def test_service_fails_when_a_scenario_fails_but_runs_them_all(tmp_path: Path) -> None:
    status, ran = _run_service(tmp_path, failing="hibernate-resume")
    assert status == 1
    assert len(ran) == len(shipped_scenarios())


def test_service_keeps_runs_for_30_days(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    old, recent = runs / "old-run", runs / "recent-run"
    for run in (old, recent):
        (run / "result.json").parent.mkdir(parents=True)
        (run / "result.json").write_text("{}")
    now = time.time()
    os.utime(old, (now - 31 * 86400, now - 31 * 86400))
    os.utime(recent, (now - 29 * 86400, now - 29 * 86400))
    argv = [arg.replace(RUNS_DIR, str(runs)) for arg in _exec_line(_unit(SERVICE)["Service"]["ExecStopPost"])]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    assert sorted(path.name for path in runs.iterdir()) == ["recent-run"]


def test_timer_fires_at_two_and_catches_up() -> None:
    unit = _unit(TIMER)
    assert unit["Timer"]["OnCalendar"] == "*-*-* 02:00:00"
    assert unit["Timer"]["Persistent"] == "true"
    assert unit["Timer"]["Unit"] == SERVICE.name
    assert unit["Install"]["WantedBy"] == "timers.target"


def _verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    known_good = tmp_path / "lab-known-good.service"
    known_good.write_text("[Unit]\nDescription=check\n\n[Service]\nType=oneshot\nExecStart=/bin/true\n")
    if _verify([known_good]).returncode != 0:
        pytest.skip("systemd-analyze verify is not usable in this container")
    copies = []
    checkout = _unit(SERVICE)["Service"]["WorkingDirectory"]
    for unit in (SERVICE, TIMER):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(checkout, str(REPO_ROOT)))
        copies.append(copy)
    done = _verify(copies)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""
