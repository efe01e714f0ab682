"""Matrix files and `lab run --matrix`: expansion, one-line errors, and a real matrix of two kernels."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.fleet.matrix import Cell, Dimensions, HostSpec, load_matrix
from lab.machine.accel import kvm_status
from lab.paths import REPO_ROOT, SCENARIOS_DIR
from lab.scenario.model import find_scenario
from lab.vocabulary import guest_arch

LAB = [sys.executable, "-m", "lab.cli"]
PINNED_KERNEL = "linux-image-cloud-arm64=6.12.117-1"


def _matrix(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _lab_run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAB, "run", *args], capture_output=True, text=True, timeout=timeout)


SHIPPED = sorted((REPO_ROOT / "matrices").glob("*.yaml"))


def test_matrices_are_shipped():
    assert SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_every_shipped_matrix_expands_into_cells_that_can_run(path):
    matrix = load_matrix(path)
    cells = matrix.cells()
    dimensions = matrix.dimensions
    assert len(cells) == (len(matrix.scenarios) * len(dimensions.kernels) * len(dimensions.personalities)
                          * len(dimensions.accelerators))
    assert len({cell.dir_name for cell in cells}) == len(cells)
    for cell in cells:
        assert cell.scenario.path.is_file(), cell.id
        arches = {guest_arch(arch) for arch in cell.scenario.arches}
        assert not arches or guest_arch(matrix.arch) in arches, cell.id


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_a_bad_field_in_a_shipped_matrix_is_one_line_naming_file_line_and_field(tmp_path, path):
    lines = path.read_text().splitlines()
    (line,) = [number for number, text in enumerate(lines, 1) if text.startswith("kernels: [")]
    lines[line - 1] = "kernels: [default, linux-image-cloud-arm64]"
    broken = _matrix(tmp_path, "\n".join(lines) + "\n", name=path.name)
    with pytest.raises(UsageError) as caught:
        load_matrix(broken)
    assert str(caught.value) == (f"{broken}:{line}: kernels/1: 'linux-image-cloud-arm64' "
                                 "is neither `default` nor a Debian kernel as linux-image-…=VERSION")


def test_cells_are_every_scenario_on_every_kernel_and_accelerator_and_named_by_the_file(tmp_path):
    matrix = load_matrix(_matrix(tmp_path, f'kernels: [default, "{PINNED_KERNEL}"]\n'
                                           "scenarios: [hibernate-resume, psci-none]\naccelerators: [tcg]\n"
                                           "workers: 2\n", name="nightly-ish.yaml"))
    assert (matrix.name, matrix.workers, matrix.arch) == ("nightly-ish", 2, "arm64")
    assert [cell.id for cell in matrix.cells()] == [
        "hibernate-resume[kernel=default,accel=tcg]", f"hibernate-resume[kernel={PINNED_KERNEL},accel=tcg]",
        "psci-none[kernel=default,accel=tcg]", f"psci-none[kernel={PINNED_KERNEL},accel=tcg]",
    ]
    named = load_matrix(_matrix(tmp_path, "name: mine\nkernels: [default]\nscenarios: [psci-none]\n"))
    assert named.name == "mine"


def test_personalities_override_and_ids_name_only_what_the_matrix_sets(tmp_path):
    matrix = load_matrix(_matrix(tmp_path, "kernels: [default]\nscenarios: [poweroff-baseline, psci-none]\n"
                                           "personalities: [kvm, none]\n"))
    assert [cell.id for cell in matrix.cells()] == [
        "poweroff-baseline[kernel=default,psci=kvm]", "poweroff-baseline[kernel=default,psci=none]",
        "psci-none[kernel=default,psci=kvm]", "psci-none[kernel=default,psci=none]",
    ]
    assert matrix.workers == 1
    plain = Dimensions().cells(find_scenario("poweroff-baseline"))
    assert [(cell.id, cell.psci, cell.accel) for cell in plain] == [("poweroff-baseline[kernel=default]", None, None)]


HOSTS_MATRIX = ("kernels: [default]\nscenarios: [hibernate-resume]\naccelerators: [kvm]\n"
                "hosts: [kvm-host, 'kvm-host:linux-image-cloud-arm64=6.12.117-1', 'ssh://root@10.0.0.7:22']\n")


def test_hosts_are_a_dimension_and_only_ssh_hosts_are_taken_as_running():
    cells = Dimensions(hosts=(None, "kvm-host")).cells(find_scenario("poweroff-baseline"))
    assert [cell.id for cell in cells] == ["poweroff-baseline[kernel=default]",
                                           "poweroff-baseline[kernel=default,host=kvm-host]"]
    assert HostSpec.parse("kvm-host:linux-image-cloud-arm64=6.12.117-1") == HostSpec(
        "kvm-host", "linux-image-cloud-arm64=6.12.117-1")
    assert HostSpec.parse("kvm-host") == HostSpec("kvm-host", None)
    assert HostSpec.parse("ssh://root@10.0.0.7:22") is None


def test_a_matrix_file_names_its_hosts(tmp_path):
    matrix = load_matrix(_matrix(tmp_path, HOSTS_MATRIX))
    assert [cell.host for cell in matrix.cells()] == ["kvm-host", "kvm-host:linux-image-cloud-arm64=6.12.117-1",
                                                      "ssh://root@10.0.0.7:22"]
    local = load_matrix(_matrix(tmp_path, "kernels: [default]\nscenarios: [poweroff-baseline]\nhosts: [local]\n",
                                "local.yaml"))
    assert [cell.host for cell in local.cells()] == [None]


def test_cell_directory_names_need_no_quoting():
    cell = Cell(find_scenario("hibernate-resume"), "linux-image-cloud-arm64=1:6.12~rc1 x", "none", "tcg")
    assert cell.dir_name == "hibernate-resume.kernel=linux-image-cloud-arm64=1.6.12.rc1.x.psci=none.accel=tcg"


def test_scenario_files_are_found_relative_to_the_matrix(tmp_path):
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra/mine.yaml").write_text((SCENARIOS_DIR / "poweroff-baseline.yaml").read_text()
                                              .replace("name: poweroff-baseline", "name: my-poweroff"))
    matrix = load_matrix(_matrix(tmp_path, "kernels: [default]\nscenarios: [extra/mine.yaml, poweroff-baseline]\n"))
    assert [cell.scenario.name for cell in matrix.cells()] == ["my-poweroff", "poweroff-baseline"]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("kernels: [default]\nscenarios: [poweroff-baseline]\nworkerz: 2\n", 3,
         "workerz: Additional properties are not allowed ('workerz' was unexpected)"),
        ("kernels:\n  - default\n  - linux-image-cloud-arm64\nscenarios: [poweroff-baseline]\n", 3,
         "kernels/1: 'linux-image-cloud-arm64' is neither `default` nor a Debian kernel as linux-image-…=VERSION"),
        ("kernels: [default]\nscenarios: [poweroff-baseline]\npersonalities:\n  - kvm\n  - kvn\n", 5,
         "personalities/1: 'kvn' is not one of"),
        ("kernels: [default]\nscenarios: [poweroff-baseline]\nworkers: 0\n", 3,
         "workers: 0 is less than the minimum of 1"),
        ("kernels: [default]\nscenarios:\n  - poweroff-baseline\n  - hibernate-resum\n", 4,
         "scenarios/1: no scenario named 'hibernate-resum'"),
        ("kernels: [default]\nscenarios:\n  - poweroff-baseline\n  - ../scenarios/poweroff-baseline.yaml\n", 4,
         "scenarios/1: scenario poweroff-baseline is listed twice"),
        ("kernels: [default]\nscenarios: [poweroff-baseline, psci-none]\narch: x86_64\n", 2,
         "scenarios/1: scenario psci-none is for arm64 guests only, not x86_64"),
        ("kernels: [default]\nscenarios: [poweroff-baseline]\nhosts: [kvm-host, 'http://x']\n", 3,
         "hosts/1: 'http://x' is neither `local`, `ssh://USER@HOST:PORT` nor `kvm-host[:linux-image-…=VERSION]`"),
        ("kernels: [default]\n", 1, "(top level): 'scenarios' is a required property"),
        ("kernels: [default\nscenarios: []\n", 2, "not valid YAML"),
        ("", 1, "(top level): None is not of type 'object'"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, text, line, fragment):
    (tmp_path / "matrices").mkdir()
    path = _matrix(tmp_path / "matrices", text)
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios/poweroff-baseline.yaml").write_text((SCENARIOS_DIR / "poweroff-baseline.yaml").read_text())
    with pytest.raises(UsageError) as caught:
        load_matrix(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message
    assert "\n" not in message


def test_bad_matrix_file_is_one_line_and_exit_2(tmp_path):
    path = _matrix(tmp_path, "kernels: [default]\nscenarios: [poweroff-baseline]\naccelerators: [hvf]\n")
    done = _lab_run("--matrix", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 2
    assert done.stderr.startswith(f"lab: error: {path}:3: accelerators/0: 'hvf' is not one of"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    missing = _lab_run("--matrix", str(tmp_path / "none.yaml"))
    assert missing.returncode == 2 and missing.stderr.startswith("lab: error: cannot read matrix")


@pytest.mark.depends_on_kvm
@pytest.mark.skipif(kvm_status("aarch64")[0], reason="KVM runs arm64 guests here")
def test_a_cell_the_lab_cannot_run_is_an_error_and_the_matrix_still_reports(tmp_path):
    path = _matrix(tmp_path, "kernels: [default]\nscenarios: [poweroff-baseline]\naccelerators: [kvm]\n")
    done = _lab_run("--matrix", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 1, done.stdout + done.stderr
    (matrix_dir,) = (path for path in (tmp_path / "runs").iterdir() if path.is_dir())
    summary = json.loads((matrix_dir / "matrix.json").read_text())
    (cell,) = summary["cells"]
    assert (cell["status"], cell["host"]) == ("ERROR", socket.gethostname())
    assert cell["reason"].startswith("--accel kvm is not possible here"), cell["reason"]
    assert "lab: error: --accel kvm is not possible here" in (Path(cell["run_dir"]) / "output.log").read_text()
    suites = ET.parse(matrix_dir / "junit.xml").getroot()
    assert suites.get("failures") == "1"
    assert (matrix_dir / "report.html").exists()


def _qemu_using(directory: Path) -> list[str]:
    """QEMU processes whose command line names `directory`: a matrix must leave none behind."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0] and any(str(directory).encode() in arg for arg in argv):
            found.append(cmdline.parent.name)
    return found


@pytest.mark.guest
def test_two_kernels_in_parallel_through_the_cli(tmp_path, default_image):
    path = _matrix(tmp_path, f'kernels: [default, "{PINNED_KERNEL}"]\nscenarios: [poweroff-baseline]\n',
                   name="smoke.yaml")
    started = time.monotonic()
    done = _lab_run("--matrix", str(path), "--workers", "2", "--runs-dir", str(tmp_path / "runs"), timeout=900)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert _qemu_using(tmp_path) == []
    (matrix_dir,) = (path for path in (tmp_path / "runs").iterdir() if path.is_dir())
    assert matrix_dir.name.startswith("smoke-")
    summary = json.loads((matrix_dir / "matrix.json").read_text())
    assert summary["workers"] == 2 and summary["passed"] is True
    cells = {cell["kernel"]: cell for cell in summary["cells"]}
    assert set(cells) == {"default", PINNED_KERNEL}
    releases = set()
    for kernel, cell in cells.items():
        run_dir = Path(cell["run_dir"])
        assert run_dir.parent == matrix_dir and run_dir.name == f"poweroff-baseline.kernel={kernel}"
        result = json.loads((run_dir / "result.json").read_text())
        assert (cell["status"], result["verdict"]["status"]) == ("PASS", "PASS")
        assert cell["reason"] == result["verdict"]["reason"] and cell["seconds"] > 0
        assert cell["host"] == socket.gethostname()
        releases.add(result["environment"]["image"]["kernel_release"])
        assert (run_dir / "console-boot1.log").exists() and (run_dir / "output.log").exists()
    assert any(release.startswith("6.12.117") for release in releases) and len(releases) == 2
    first, second = sorted(summary["cells"], key=lambda cell: cell["start"])
    assert second["start"] < first["start"] + first["seconds"], "the two cells ran at the same time"
    suites = ET.parse(matrix_dir / "junit.xml").getroot()
    assert (suites.get("failures"), len(suites.findall("testsuite"))) == ("0", 2)
    report = (matrix_dir / "report.html").read_text()
    assert report.count("report.html") == 2 and "2 passed" in report
    assert "poweroff-baseline[kernel=default]" in done.stdout and "PASS smoke: 2 PASS" in done.stdout
    print(f"matrix of 2 cells with 2 workers: {seconds:.1f}s wall, cells "
          + ", ".join(f"{cell['seconds']:.1f}s" for cell in cells.values()))
