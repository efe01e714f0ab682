"""pytest plugin: scenario files become test items, one per scenario and matrix cell.

`pytest --lab-matrix matrices/nightly.yaml scenarios/`, or `pytest scenarios/ --lab-kernel … --lab-psci …`.
The plugin is inert unless a `--lab-…` option is given, so a project's own test suite is unaffected,
and it imports the lab only then. Images are prepared on the controller before any pytest-xdist
worker starts and handed to the workers, so workers neither race to build an image nor each pay
for resolving its packages.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from lab.fleet.matrix import Cell, Dimensions

IMAGES_WORKERINPUT = "lab_images"
"""The key under which the controller hands its prepared images to pytest-xdist workers."""
_OPTION_FIELDS = {"lab_kernel": "kernels", "lab_psci": "personalities", "lab_accel": "accelerators",
                  "lab_qemu": "qemus"}


@dataclass
class LabSettings:
    """What the `--lab-…` options (and the matrix file they name) ask for, shared by every item."""

    dimensions: Dimensions
    arch: str
    scenario_names: frozenset[str] | None
    runs_dir: Path | None
    images: dict[str, str] = field(default_factory=dict)

    def image_dir(self, name: str, kernel: str) -> str:
        """The built image for a recipe and kernel; prepared here only if the controller did not."""
        from lab.image.store import find_image

        key = f"{name} {kernel}"
        if key not in self.images:
            self.images[key] = str(find_image(name, kernel, log=lambda line: print(f"lab:   {line}")).path)
        return self.images[key]


_SETTINGS = pytest.StashKey[LabSettings]()


class ScenarioFailed(Exception):
    """The scenario ran and its verdict is FAIL: reported as the verdict's reason, not a traceback."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lab", "hibernation lab: scenario files as tests (only with a --lab-… option)")
    group.addoption("--lab-matrix", metavar="FILE",
                    help="a matrix file: its kernels, personalities, accelerators and QEMUs, and only its scenarios")
    group.addoption("--lab-kernel", action="append", metavar="SPEC",
                    help="`default` or linux-image-…=VERSION; repeat for several (overrides the matrix's)")
    group.addoption("--lab-psci", action="append", metavar="PERSONALITY",
                    help="PSCI personality to override each scenario's with; repeat for several")
    group.addoption("--lab-accel", action="append", metavar="ACCEL", help="kvm or tcg; repeat for several")
    group.addoption("--lab-qemu", action="append", metavar="BUILD",
                    help="QEMU build: debian, patched or a binary's path; repeat for several")
    group.addoption("--lab-arch", metavar="ARCH", help="guest arch (default: the matrix's, else arm64)")
    group.addoption("--lab-runs-dir", metavar="DIR", help="where run directories go (default: pytest's tmp)")


def _settings(config: pytest.Config) -> LabSettings | None:
    from lab.fleet.matrix import Dimensions, check_dimension, load_matrix

    option = config.option
    if all(getattr(option, name) is None for name in (*_OPTION_FIELDS, "lab_matrix", "lab_arch", "lab_runs_dir")):
        return None
    matrix = load_matrix(Path(option.lab_matrix)) if option.lab_matrix else None
    chosen = {name: getattr(option, name) for name in _OPTION_FIELDS}
    for name, values in chosen.items():
        if values is not None:
            check_dimension(_OPTION_FIELDS[name], values, f"--{name.replace('_', '-')}")
    if option.lab_arch is not None:
        check_dimension("arch", option.lab_arch, "--lab-arch")
    base = matrix.dimensions if matrix else Dimensions()
    return LabSettings(
        dimensions=Dimensions(
            kernels=tuple(chosen["lab_kernel"] or base.kernels),
            personalities=tuple(chosen["lab_psci"] or base.personalities),
            accelerators=tuple(chosen["lab_accel"] or base.accelerators),
            qemus=tuple(chosen["lab_qemu"] or base.qemus),
        ),
        arch=option.lab_arch or (matrix.arch if matrix else "arm64"),
        scenario_names=frozenset(scenario.name for scenario in matrix.scenarios) if matrix else None,
        runs_dir=Path(option.lab_runs_dir) if option.lab_runs_dir else None,
    )


def pytest_configure(config: pytest.Config) -> None:
    from lab.errors import LabError, printable
    from lab.image.recipe import DEFAULT_IMAGE
    from lab.vocabulary import guest_arch

    try:
        settings = _settings(config)
        if settings is None:
            return
        config.stash[_SETTINGS] = settings
        workerinput = getattr(config, "workerinput", None)
        if workerinput is not None:
            settings.images.update(workerinput[IMAGES_WORKERINPUT])
        elif not config.option.collectonly:
            name = DEFAULT_IMAGE[guest_arch(settings.arch).debian]
            for kernel in settings.dimensions.kernels:
                print(f"lab: image {name} with kernel {kernel}")
                settings.image_dir(name, kernel)
    except LabError as error:
        raise pytest.UsageError(printable(str(error))) from None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: every worker gets the images the controller prepared."""
    settings = node.config.stash.get(_SETTINGS, None)
    if settings is not None:
        node.workerinput[IMAGES_WORKERINPUT] = dict(settings.images)


def _may_be_scenario(path: Path) -> bool:
    """Scenario files are mappings with steps; a file that is not valid YAML is collected to show its error.

    Only the top level is composed, from at most a scenario file's size: no alias is expanded here, and a
    file the lab would refuse (an alias, too big, not UTF-8) is collected to show why.
    """
    from lab.errors import UsageError
    from lab.yaml_file import read_text

    if not path.is_file():
        return False
    try:
        node = yaml.compose(read_text(path, "scenario"), Loader=yaml.SafeLoader)
    except (UsageError, yaml.YAMLError, RecursionError):
        return True
    return isinstance(node, yaml.MappingNode) and any(key.value == "steps" for key, _ in node.value)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> ScenarioFile | None:
    if _SETTINGS not in parent.config.stash or file_path.suffix not in (".yaml", ".yml"):
        return None
    return ScenarioFile.from_parent(parent, path=file_path) if _may_be_scenario(file_path) else None


def _one_line(excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
    from lab.errors import LabError, printable

    if excinfo.errisinstance(LabError):
        return printable(str(excinfo.value))
    return str(excinfo.value) if excinfo.errisinstance(ScenarioFailed) else None


class ScenarioFile(pytest.File):
    """A scenario YAML file: one item per cell of the matrix, or none if the matrix leaves it out."""

    def collect(self) -> list[ScenarioItem]:
        from lab.scenario.model import load_scenario
        from lab.vocabulary import guest_arch

        settings = self.config.stash[_SETTINGS]
        scenario = load_scenario(self.path)
        if settings.scenario_names is not None and scenario.name not in settings.scenario_names:
            return []
        cells = settings.dimensions.cells(scenario)
        items = [ScenarioItem.from_parent(self, name=cell.id, cell=cell) for cell in cells]
        if scenario.arches and guest_arch(settings.arch) not in {guest_arch(arch) for arch in scenario.arches}:
            for item in items:
                item.add_marker(pytest.mark.skip(reason=f"{scenario.name} is for {', '.join(scenario.arches)} only"))
        return items

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        return _one_line(excinfo) or super().repr_failure(excinfo)


class ScenarioItem(pytest.Item):
    """One cell: the scenario runs through lab.scenario.run.run_scenario into a run directory of its own."""

    def __init__(self, *, cell: Cell, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cell = cell

    def _run_dir(self, settings: LabSettings) -> Path:
        from lab.rundir import timestamp, unique_dir

        if settings.runs_dir is not None:
            return unique_dir(settings.runs_dir, f"{self.cell.dir_name}-{timestamp()}")
        factory: pytest.TempPathFactory = self.config._tmp_path_factory  # type: ignore[attr-defined]  # pytest's tmp_path
        return factory.mktemp(self.cell.dir_name, numbered=True)

    def runtest(self) -> None:
        from rich.console import Console

        from lab.fleet.matrix import image_name
        from lab.report.terminal import TerminalReport
        from lab.scenario.run import RunOptions, run_scenario

        settings = self.config.stash[_SETTINGS]
        run_dir = self._run_dir(settings)
        self.user_properties.append(("run_dir", str(run_dir)))
        image = settings.image_dir(image_name(self.cell.scenario, settings.arch), self.cell.kernel)
        options = RunOptions(arch=settings.arch, image=image, accel=self.cell.accel, psci=self.cell.psci,
                             qemu=self.cell.qemu, run_dir=run_dir)
        report = TerminalReport(Console(file=sys.stdout, highlight=False, soft_wrap=True))
        result = run_scenario(self.cell.scenario, options, [report])
        report.verdict(result.verdict, result.run_dir, result.seconds)
        self.user_properties.append(("verdict", "PASS" if result.verdict.passed else "FAIL"))
        if not result.verdict.passed:
            raise ScenarioFailed(f"{result.verdict.reason}\nrun directory: {result.run_dir}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        return _one_line(excinfo) or super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name
