"""Scenarios on real arm64 KVM: `lab scenario … --host` on an emulated kvm-host, and each way it fails.

One 7.2 host boots for the module (`start_host`); its KVM offers SYSTEM_OFF2. With Debian's stock
QEMU the host kernel's kvm_hvc_arm64 trace is the witness that sees OFF2 (and the verdict notes that
QEMU drops it); with the lab's patched QEMU the QMP surface reports it too, and both agree. A 6.12
host, started with `lab host start` as a user would, has no SYSTEM_OFF2 in KVM: the guest falls back
to SYSTEM_OFF, and the class is `hibernate-off`; killing that host in the middle of a run ends the run
with its artifacts. After every run: no QEMU here or on the host, and no run directory left there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from lab.deadline import Deadline
from lab.fleet.host_vm import RunningHost, build_host_image, start_host
from lab.hosts.known import known_host
from lab.machine.channels.ssh import parse_public_key
from tests.support.kernels import kernel_pin, newest_served
from tests.support.kvm_host import host_client, no_qemu_besides, qemu_besides, read_line, run_on_host

pytestmark = pytest.mark.guest

LAB = [sys.executable, "-m", "lab.cli"]
RUN_SECONDS = 1200.0
"""A KVM scenario here: about 3 minutes on an idle machine (two guest boots of 35 to 50 s each)."""
SYSTEM_RUN_SECONDS = 2400.0
"""`system-hibernate-resume` on KVM here: the system's disk packed and copied to the host first (once per host)."""
HOST_START_SECONDS = 900.0
ARTIFACTS = ("result.json", "junit.xml", "report.html", "events.jsonl")
HIBERNATE_ONLY = """\
name: hibernate-{expect}
description: Boot, hibernate, and judge only how the guest powered off.
steps:
  - boot: {{expect: fresh}}
  - hibernate: {{expect: {expect}}}
"""


def _log(line: str) -> None:
    print(f"lab host: {line}")


@pytest.fixture(scope="module")
def host() -> Iterator[RunningHost]:
    image, _ = build_host_image(log=_log)
    with start_host(image=image, log=_log) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_orphan_qemu(host) -> Iterator[None]:
    """The module's host QEMU lives across tests; any other QEMU a test leaves behind is a leak."""
    yield
    no_qemu_besides(host)


@pytest.fixture(scope="module")
def client(host) -> Iterator[paramiko.SSHClient]:
    with host_client(host) as ssh:
        yield ssh


def lab_scenario(runs: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = RUN_SECONDS) -> tuple[subprocess.CompletedProcess[str], Path | None]:
    done = subprocess.run([*LAB, "scenario", *args, "--runs-dir", str(runs)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    run_dirs = sorted(path for path in runs.iterdir() if path.is_dir()) if runs.is_dir() else []
    return done, run_dirs[-1] if run_dirs else None


def verdict_of(run_dir: Path) -> dict:
    result = json.loads((run_dir / "result.json").read_text())
    (power_off,) = result["verdict"]["power_offs"]
    return {"status": result["verdict"]["status"], "kind": power_off["class"], "notes": power_off["notes"],
            "witnesses": {w["name"]: w for w in power_off["witnesses"]}, "reason": result["verdict"]["reason"]}


@pytest.fixture
def leaves_nothing(host, client) -> Iterator[None]:
    """After the test: no QEMU of this process, none on the host, no run directory on the host."""
    yield
    deadline = Deadline(30)
    while "qemu-system" in run_on_host(client, "ps -o comm"):
        assert not deadline.expired, "a QEMU is still running on the host"
        time.sleep(0.5)
    assert run_on_host(client, "ls -A /run/lab/runs 2>/dev/null || true").strip() == ""


def test_hibernate_resume_on_kvm_with_stock_qemu_sees_off2_in_the_host_kernel(host, tmp_path, leaves_nothing):
    done, run_dir = lab_scenario(tmp_path, "hibernate-resume", "--host", host.url, "--accel", "kvm")
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = verdict_of(run_dir)
    assert verdict["kind"] == "hibernate-off2"
    assert any(note.startswith("QEMU drops OFF2") for note in verdict["notes"])
    kvm = verdict["witnesses"]["host-kvm"]
    assert kvm["facts"]["system_off2"] == 1 and kvm["consistent_with"] == ["hibernate-off2"]
    assert verdict["witnesses"]["vmm-psci"]["consistent_with"] is None, "KVM answered PSCI, not the lab's layer"
    machine = json.loads((run_dir / "machine-boot1.json").read_text())
    assert machine["accel"] == "kvm" and machine["console"] == "virtio" and machine["host"] == host.url
    assert all((run_dir / name).is_file() for name in ARTIFACTS)
    assert (run_dir / "swap.qcow2").is_file(), "the swap disk comes home from the host"


def test_coldboot_with_an_altered_signature_on_kvm(host, tmp_path, leaves_nothing):
    done, run_dir = lab_scenario(tmp_path, "hibernate-coldboot-altered-signature", "--host", host.url,
                                 "--accel", "kvm")
    assert done.returncode == 0, done.stdout + done.stderr
    assert verdict_of(run_dir)["kind"] == "hibernate-off2"


def test_poweroff_baseline_on_kvm_is_a_plain_system_off(host, tmp_path, leaves_nothing):
    done, run_dir = lab_scenario(tmp_path, "poweroff-baseline", "--host", host.url, "--accel", "kvm")
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = verdict_of(run_dir)
    assert verdict["kind"] == "poweroff"
    assert verdict["witnesses"]["host-kvm"]["facts"]["system_off"] == 1


def test_the_patched_qemu_on_kvm_reports_off2_over_qmp_and_agrees_with_the_host_kernel(host, tmp_path,
                                                                                      leaves_nothing):
    scenario = tmp_path / "hibernate-off2.yaml"
    scenario.write_text(HIBERNATE_ONLY.format(expect="hibernate-off2"))
    done, run_dir = lab_scenario(tmp_path / "runs", str(scenario), "--host", host.url, "--accel", "kvm",
                                 "--qemu", "patched")
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = verdict_of(run_dir)
    assert verdict["witnesses"]["vmm-qmp"]["consistent_with"] == ["hibernate-off2"]
    assert verdict["witnesses"]["host-kvm"]["consistent_with"] == ["hibernate-off2"]
    assert not any(note.startswith("QEMU drops OFF2") for note in verdict["notes"])
    events = [json.loads(line) for line in (run_dir / "qmp-boot1.jsonl").read_text().splitlines()]
    assert [event["event"] for event in events][-2:] == ["SUSPEND_DISK", "SHUTDOWN"]
    assert events[-1]["data"] == {"guest": True, "reason": "guest-shutdown"}, "reported as x86 reports ACPI S4"


def test_system_hibernate_resume_on_kvm_writes_only_an_overlay_and_brings_only_that_home(host, tmp_path,
                                                                                         leaves_nothing):
    """A whole Debian system (systemd, initramfs-tools, OpenSSH) hibernates and resumes on real KVM. Its disk
    goes to the host once, packed; the run writes to an overlay of it there, and only the overlay comes home,
    backed here by the image's own disk."""
    done, run_dir = lab_scenario(tmp_path, "system-hibernate-resume", "--host", host.url, "--accel", "kvm",
                                 timeout=SYSTEM_RUN_SECONDS)
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = verdict_of(run_dir)
    assert verdict["kind"] == "hibernate-off2"
    assert verdict["witnesses"]["host-kvm"]["facts"]["system_off2"] == 1
    environment = json.loads((run_dir / "result.json").read_text())["environment"]
    image_disk = Path(environment["image"]["path"]) / "disk.raw"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(run_dir / "swap.qcow2")],
                                     capture_output=True, text=True, check=True, timeout=60).stdout)
    assert info["backing-filename"] == str(image_disk.resolve()) and info["backing-filename-format"] == "raw"


def test_a_guest_larger_than_the_host_s_free_ram_is_a_set_up_error(host, tmp_path, leaves_nothing):
    scenario = tmp_path / "huge.yaml"
    scenario.write_text("name: huge\ndescription: More RAM than the host has.\nmemory_mib: 65536\n"
                        "steps:\n  - boot\n")
    done, run_dir = lab_scenario(tmp_path / "runs", str(scenario), "--host", host.url, "--accel", "kvm",
                                 timeout=300)
    _set_up_error(done, run_dir, "MiB of RAM free and this guest needs 65792")


def _set_up_error(done: subprocess.CompletedProcess[str], run_dir: Path | None, fragment: str) -> None:
    """Exit 2, one line on stderr that says what is wrong, and the run directory still complete."""
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lab: error: ") and fragment in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert run_dir is not None and all((run_dir / name).is_file() for name in ARTIFACTS[:3]), run_dir
    assert json.loads((run_dir / "result.json").read_text())["verdict"]["status"] == "ERROR"


def _home_pinning(tmp_path: Path, host_name: str, key: paramiko.PKey, identity: Path) -> dict[str, str]:
    """An environment whose ~/.ssh/known_hosts pins `key` for `host_name` and logs in with `identity`."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(f"{host_name} {key.get_name()} {key.get_base64()}\n")
    return {**os.environ, "HOME": str(home), "LAB_SSH_IDENTITY": str(identity),
            "LAB_CACHE_DIR": os.environ.get("LAB_CACHE_DIR", str(Path.home() / ".cache" / "hibernation-lab"))}


def test_a_host_nobody_answers_on_is_a_set_up_error(host, tmp_path):
    env = _home_pinning(tmp_path, "[127.0.0.1]:1", parse_public_key(host.host_key), host.client_key)
    done, run_dir = lab_scenario(tmp_path / "runs", "poweroff-baseline", "--host", "ssh://root@127.0.0.1:1",
                                 env=env, timeout=120)
    _set_up_error(done, run_dir, "cannot be reached")


def test_a_host_unknown_to_the_lab_is_refused_not_trusted_on_first_use(tmp_path):
    done, run_dir = lab_scenario(tmp_path, "poweroff-baseline", "--host", "ssh://root@127.0.0.1:1", timeout=120)
    _set_up_error(done, run_dir, "no host key known")


def test_a_host_with_another_key_is_refused(host, tmp_path):
    """The host is reached under another name, and the key pinned for that name is not the host's."""
    env = _home_pinning(tmp_path, f"[localhost]:{host.port}", paramiko.ECDSAKey.generate(), host.client_key)
    done, run_dir = lab_scenario(tmp_path / "runs", "poweroff-baseline", "--host", f"ssh://root@localhost:{host.port}",
                                 env=env, timeout=120)
    _set_up_error(done, run_dir, "presented a host key other than the one pinned")


@pytest.mark.parametrize(("break_it", "mend_it", "fragment"), [
    ("mv /dev/kvm /dev/kvm.away", "mv /dev/kvm.away /dev/kvm", "/dev/kvm"),
    ("umount /sys/kernel/tracing", "mount -t tracefs tracefs /sys/kernel/tracing", "trac"),
    ("mv /usr/bin/qemu-system-aarch64 /usr/bin/qemu-away", "mv /usr/bin/qemu-away /usr/bin/qemu-system-aarch64",
     "qemu-system-aarch64"),
], ids=["no-dev-kvm", "no-tracefs", "no-qemu"])
def test_a_host_without_what_kvm_runs_need_is_a_set_up_error(host, client, tmp_path, break_it, mend_it, fragment,
                                                             leaves_nothing):
    run_on_host(client, break_it)
    try:
        done, run_dir = lab_scenario(tmp_path, "poweroff-baseline", "--host", host.url, "--accel", "kvm",
                                     timeout=300)
    finally:
        run_on_host(client, mend_it)
    _set_up_error(done, run_dir, fragment)


def test_a_612_host_kernel_falls_back_to_system_off_and_a_host_that_dies_ends_the_run(host, tmp_path):
    """The host kernel as a dimension, from `lab host start` as a user runs it; then the host dies mid-run."""
    starter = subprocess.Popen([*LAB, "host", "start", "--kernel-deb", kernel_pin("6.12")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        ready = read_line(starter, r"^ready: ", HOST_START_SECONDS, "`ready:` line from lab host start").string
        url = ready.split()[1]
        assert f"kernel {newest_served('6.12').split('-')[0]}" in ready and "kvm: yes" in ready
        scenario = tmp_path / "hibernate-off.yaml"
        scenario.write_text(HIBERNATE_ONLY.format(expect="hibernate-off"))
        done, run_dir = lab_scenario(tmp_path / "fallback", str(scenario), "--host", url, "--accel", "kvm")
        assert done.returncode == 0, done.stdout + done.stderr
        verdict = verdict_of(run_dir)
        assert verdict["kind"] == "hibernate-off"
        facts = verdict["witnesses"]["host-kvm"]["facts"]
        assert facts["psci_features"] >= 1, "the guest asked PSCI_FEATURES (for SYSTEM_OFF2) before SYSTEM_OFF"
        assert facts | {"hvc_calls": 0, "psci_features": 1} == {
            "traced": True, "hvc_calls": 0, "system_off2": 0, "system_off": 1, "system_reset": 0, "psci_features": 1}

        runs = tmp_path / "dies"
        run = subprocess.Popen([*LAB, "scenario", "hibernate-resume", "--host", url, "--accel", "kvm",
                                "--runs-dir", str(runs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = Deadline(RUN_SECONDS)
            while not (runs.is_dir() and any(runs.glob("*/console-boot1.log"))):
                assert not deadline.expired and run.poll() is None, "the run never launched its guest"
                time.sleep(1)
            (console,) = runs.glob("*/console-boot1.log")
            known = known_host(url)
            assert known is not None and known.qemu_pid is not None
            killed = time.monotonic()
            os.kill(known.qemu_pid, signal.SIGKILL)
            out, err = run.communicate(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait(30)
        print(f"the run ended {time.monotonic() - killed:.1f}s after its host was killed")
        assert run.returncode in (1, 2), out + err
        assert "Traceback" not in err
        (run_dir,) = (path for path in runs.iterdir() if path.is_dir())
        assert all((run_dir / name).is_file() for name in ARTIFACTS[:3]), sorted(p.name for p in run_dir.iterdir())
        assert console.is_file()
        starter.wait(60)
    finally:
        if starter.poll() is None:
            starter.send_signal(signal.SIGTERM)
            try:
                starter.wait(60)
            except subprocess.TimeoutExpired:
                starter.kill()
                starter.wait(30)
    assert not qemu_besides(host)
    assert known_host(url) is None, "a host that died leaves no entry in the hosts file"
