"""Debian packages by name, through a private apt configuration.

The host's apt setup is never touched: sources list, state, lists and the package cache
all live under the lab's cache directory, and apt is pointed at them with `-o` options.
What apt and dpkg-deb print (stanzas, control files, relation fields) is read with python-debian.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from debian.deb822 import Deb822, Packages

from lab.digest import sha256_file
from lab.errors import SetupError, UsageError
from lab.locks import held_lock

MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@dataclass(frozen=True)
class PackageVersion:
    """A resolved binary package: what a manifest records and a cache key is made of."""

    name: str
    arch: str
    version: str
    sha256: str
    filename: str

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.arch}={self.version}"


SUITES = ("unstable", "testing", "trixie", "bookworm")
"""Suites the lab can fetch from: a bug report's kernel may come from any of them."""


def stanzas(text: str) -> list[Packages]:
    """The paragraphs of `apt-cache show` output (or of a Packages file)."""
    return list(Packages.iter_paragraphs(text, use_apt_pkg=False))


def _required(stanza: Deb822, name: str) -> str:
    if not stanza.get(name):
        raise SetupError(f"apt-cache show gave no {name} field")
    return str(stanza[name])


def pinned_relations(relations: list[list[dict[str, Any]]]) -> list[tuple[str, str | None]]:
    """Each relation as (name, exact version if pinned with `=`), taking the first of alternatives.

    `foo:any` is `foo`; `(>= 1)` and other constraints pin nothing.
    """
    return [(first["name"], first["version"][1] if first["version"] and first["version"][0] == "=" else None)
            for first, *_ in relations]


@dataclass(frozen=True)
class Candidate:
    """A resolved package and its direct `Depends:` as (name, exact version if pinned with `=`)."""

    package: PackageVersion
    depends: list[tuple[str, str | None]]

    @classmethod
    def of(cls, stanza: Packages, arch: str) -> Candidate:
        """The candidate an `apt-cache show` stanza describes."""
        package = PackageVersion(
            name=_required(stanza, "Package"),
            arch=arch,
            version=_required(stanza, "Version"),
            sha256=_required(stanza, "SHA256"),
            filename=Path(_required(stanza, "Filename")).name,
        )
        return cls(package, pinned_relations(stanza.relations["depends"] or []))


def binary_sources(architecture: str, suites: tuple[str, ...] = SUITES) -> tuple[str, ...]:
    """sources.list lines for Debian's binary packages of one architecture."""
    return tuple(f"deb [arch={architecture} signed-by={KEYRING}] {MIRROR} {suite} main" for suite in suites)


class PrivateApt:
    """apt-get and apt-cache against the lab's own sources list and state under `root`.

    Candidates come from `default_release` (the recipe's suite) unless a version is pinned.
    `sources` are the sources.list lines (default: Debian's binary packages of `architecture` from
    every suite the lab knows); `trust_expired` accepts a signed index past its Valid-Until date
    (the signature is still checked), which some mirrors serve for sid's sources.
    """

    def __init__(self, root: Path, default_release: str, architecture: str, sources: tuple[str, ...] = (),
                 trust_expired: bool = False) -> None:
        self.root = root
        self.default_release = default_release
        self.architecture = architecture
        self.sources = sources or binary_sources(architecture)
        self.trust_expired = trust_expired
        self.debs = root / "debs"
        self._holding_turn = False

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """apt runs here with Debug::NoLocking (its own locks want root's paths), so the lab's processes take
        turns on a private apt with a lock of their own: two `apt-get update`s at once tear up each other's lists,
        and apt-cache beside an update reads half of them. Each command has a timeout, so a wait ends."""
        if self._holding_turn:
            yield
            return
        with held_lock(self.root / "lab-apt.lock"):
            self._holding_turn = True
            try:
                yield
            finally:
                self._holding_turn = False

    def _options(self) -> list[str]:
        etc, state, cache = self.root / "etc", self.root / "state", self.root / "cache"
        options = {
            "Dir::Etc::SourceList": etc / "sources.list",
            "Dir::Etc::SourceParts": etc / "sources.list.d",
            "Dir::Etc::Preferences": etc / "preferences",
            "Dir::Etc::PreferencesParts": etc / "preferences.d",
            "Dir::State": state,
            "Dir::State::status": state / "status",
            "Dir::Cache": cache,
            "Dir::Cache::pkgcache": cache / "pkgcache.bin",
            "Dir::Cache::srcpkgcache": cache / "srcpkgcache.bin",
            "APT::Architecture": self.architecture,
            "APT::Architectures::": self.architecture,
            "APT::Default-Release": self.default_release,
            "Debug::NoLocking": "1",
            "APT::Sandbox::User": "root",
        }
        if self.trust_expired:
            options["Acquire::Check-Valid-Until"] = "false"
        return [f"-o{key}={value}" for key, value in options.items()]

    def _prepare(self) -> None:
        if not KEYRING.exists():
            raise SetupError(f"Debian archive keyring missing ({KEYRING}): install debian-archive-keyring")
        for sub in ("etc/sources.list.d", "etc/preferences.d", "state/lists/partial",
                    "cache/archives/partial", "debs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        sources = self.root / "etc/sources.list"
        wanted = "".join(f"{line}\n" for line in self.sources)
        # Rewriting an unchanged file (or touching the status file) makes apt rebuild its package
        # cache, about ten seconds, on the next call: write only what changed.
        if not sources.exists() or sources.read_text() != wanted:
            sources.write_text(wanted)
            self._lists_stamp.unlink(missing_ok=True)  # lists fetched for other sources say nothing of these
        status = self.root / "state/status"
        if not status.exists():
            status.touch()

    def _run(self, tool: str, *args: str, cwd: Path | None = None, timeout: float = 600) -> str:
        if shutil.which(tool) is None:
            raise SetupError(f"{tool} not found: the lab fetches guest packages with Debian's apt")
        try:
            with self._turn():
                done = subprocess.run(
                    [tool, *self._options(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
                )
        except subprocess.TimeoutExpired as error:
            raise SetupError(f"{tool} {' '.join(args)} took longer than {timeout:.0f}s") from error
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise SetupError(f"{tool} {' '.join(args)} failed: {last}")
        return done.stdout

    @property
    def _lists_stamp(self) -> Path:
        return self.root / "state/lists/.lab-updated"

    def lists_updated(self) -> int | None:
        """When the package lists were last fetched (ns since the epoch), None if never: a resolution
        made from other lists than the current ones is out of date."""
        try:
            return self._lists_stamp.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def update(self, force: bool = False) -> bool:
        """Fetch the package lists when there are none yet, or when forced; True if it fetched.

        Lists are not refreshed by age: builds stay reproducible and offline until the user asks
        for newer packages (`lab images build --refresh`).
        """
        with self._turn():
            self._prepare()
            if self._lists_stamp.exists() and not force:
                return False
            self._run("apt-get", "update", "-q")
            self._lists_stamp.touch()
            return True

    def _stanza(self, name: str, arch: str, version: str | None) -> Packages:
        """One package's stanza. An unknown package fails apt-cache; an unknown version of a known
        one prints nothing and exits 0: both are the same error here, with the versions there are."""
        spec = f"{name}:{arch}" + (f"={version}" if version else "")
        try:
            found = stanzas(self._run("apt-cache", "show", "--no-all-versions", spec))
        except SetupError:
            found = []
        if found:
            return found[0]
        known = self._run("apt-cache", "madison", f"{name}:{arch}").strip()
        versions = ", ".join(line.split("|")[1].strip() for line in known.splitlines() if "|" in line) or "none"
        raise SetupError(f"no {spec} in Debian {'/'.join(SUITES)} (versions there: {versions})")

    def versions(self, name: str, arch: str) -> list[str]:
        """Every version of a package the lab's suites serve, as apt-cache madison lists them."""
        self.update()
        listed = self._run("apt-cache", "madison", f"{name}:{arch}")
        return list(dict.fromkeys(line.split("|")[1].strip() for line in listed.splitlines() if "|" in line))

    def show(self, wanted: list[tuple[str, str | None]], arch: str) -> list[Candidate]:
        """Several packages (candidate or pinned version) in one apt-cache call: each call loads
        the whole package cache, so resolving an image level by level stays fast."""
        specs = [f"{name}:{arch}" + (f"={version}" if version else "") for name, version in wanted]
        try:
            output = self._run("apt-cache", "show", "--no-all-versions", *specs)
        except SetupError:
            output = ""
        found = stanzas(output)
        if len(found) != len(wanted):
            found = [self._stanza(name, arch, version) for name, version in wanted]
        return [Candidate.of(stanza, arch) for stanza in found]

    def source_versions(self, package: str) -> list[str]:
        """Every version of a source package the deb-src lines list (listed: its files may be gone already)."""
        self.update()
        listed = self._run("apt-cache", "showsrc", "--only-source", package)
        return list(dict.fromkeys(line.split(":", 1)[1].strip() for line in listed.splitlines()
                                  if line.startswith("Version:")))

    def download_source(self, package: str, version: str, into: Path) -> list[Path]:
        """A source package's files (.dsc and tarballs) as the archive serves them, downloaded into `into`."""
        into.mkdir(parents=True, exist_ok=True)
        self._run("apt-get", "source", "--download-only", "-q", f"{package}={version}", cwd=into, timeout=1800)
        return sorted(into.iterdir())

    def download(self, package: PackageVersion) -> Path:
        """The package's .deb, fetched once and verified against the archive's sha256."""
        target = self.debs / package.filename
        if target.exists() and sha256_file(target) == package.sha256:
            return target
        with tempfile.TemporaryDirectory(dir=self.debs) as staging:
            self._run("apt-get", "download", "-q", package.spec, cwd=Path(staging))
            fetched = list(Path(staging).glob("*.deb"))
            if len(fetched) != 1:
                raise SetupError(f"apt-get download {package.spec} left {len(fetched)} .deb files")
            fetched[0].rename(target)
        if sha256_file(target) != package.sha256:
            target.unlink()
            raise SetupError(f"{package.filename}: sha256 does not match the archive's")
        return target


def local_package(deb: Path, arch: str) -> PackageVersion:
    """A user's .deb file described like an archive package (name and version from its control file).

    The control file is read with dpkg-deb, which the build needs anyway: it reads every
    compression a .deb may use (zstd included), as extracting the package will.
    """
    if not deb.is_file():
        raise UsageError(f"no such kernel package: {deb}")
    done = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True)
    if done.returncode != 0:
        raise UsageError(f"{deb} is not a Debian package: {done.stderr.strip()}")
    control = Deb822(done.stdout)
    if control.get("Architecture") != arch:
        raise UsageError(f"{deb} is for {control.get('Architecture')}, the image is {arch}")
    return PackageVersion(control["Package"], arch, control["Version"], sha256_file(deb), deb.name)


def extract(deb: Path, into: Path) -> None:
    """The files a .deb installs, unpacked under `into` (as `dpkg-deb -x` does: no maintainer scripts)."""
    done = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SetupError(f"dpkg-deb -x {deb.name} failed: {done.stderr.strip()}")
