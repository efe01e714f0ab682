"""Debian packages by name, through a private apt configuration.

The host's apt setup is never touched: sources list, state, lists and the package cache
all live under the lab's cache directory, and apt is pointed at them with `-o` options.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab.errors import SetupError

MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
LISTS_MAX_AGE_SECONDS = 24 * 3600


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class PrivateApt:
    """apt-get and apt-cache against the lab's own sources list and state under `root`."""

    def __init__(self, root: Path, suite: str, architectures: tuple[str, ...]) -> None:
        self.root = root
        self.suite = suite
        self.architectures = architectures
        self.debs = root / "debs"

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
            "APT::Architecture": self.architectures[0],
            "Debug::NoLocking": "1",
            "APT::Sandbox::User": "root",
        }
        args = [f"-o{key}={value}" for key, value in options.items()]
        args += [f"-oAPT::Architectures::={arch}" for arch in self.architectures]
        return args

    def _prepare(self) -> None:
        if not KEYRING.exists():
            raise SetupError(f"Debian archive keyring missing ({KEYRING}): install debian-archive-keyring")
        for sub in ("etc/sources.list.d", "etc/preferences.d", "state/lists/partial",
                    "cache/archives/partial", "debs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        arches = ",".join(self.architectures)
        (self.root / "etc/sources.list").write_text(
            f"deb [arch={arches} signed-by={KEYRING}] {MIRROR} {self.suite} main\n"
        )
        (self.root / "state/status").touch()

    def _run(self, tool: str, *args: str, cwd: Path | None = None, timeout: float = 600) -> str:
        if shutil.which(tool) is None:
            raise SetupError(f"{tool} not found: the lab fetches guest packages with Debian's apt")
        try:
            done = subprocess.run(
                [tool, *self._options(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as error:
            raise SetupError(f"{tool} {' '.join(args)} took longer than {timeout:.0f}s") from error
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise SetupError(f"{tool} {' '.join(args)} failed: {last}")
        return done.stdout

    def lists_age(self) -> float | None:
        stamp = self.root / "state/lists/.lab-updated"
        return time.time() - stamp.stat().st_mtime if stamp.exists() else None

    def update(self, force: bool = False) -> bool:
        """Refresh the package lists when missing, older than a day, or forced; True if it fetched."""
        self._prepare()
        age = self.lists_age()
        if not force and age is not None and age < LISTS_MAX_AGE_SECONDS:
            return False
        self._run("apt-get", "update", "-q")
        (self.root / "state/lists/.lab-updated").touch()
        return True

    def _field(self, stanza: str, name: str) -> str:
        for line in stanza.splitlines():
            if line.startswith(f"{name}:"):
                return line.split(":", 1)[1].strip()
        raise SetupError(f"apt-cache show gave no {name} field")

    def resolve(self, name: str, arch: str) -> PackageVersion:
        """The candidate version of `name:arch` in the private lists."""
        stanza = self._run("apt-cache", "show", "--no-all-versions", f"{name}:{arch}").split("\n\n")[0]
        return PackageVersion(
            name=self._field(stanza, "Package"),
            arch=arch,
            version=self._field(stanza, "Version"),
            sha256=self._field(stanza, "SHA256"),
            filename=Path(self._field(stanza, "Filename")).name,
        )

    def depends(self, name: str, arch: str) -> list[str]:
        """Direct `Depends:` package names of the candidate (alternatives and versions dropped)."""
        stanza = self._run("apt-cache", "show", "--no-all-versions", f"{name}:{arch}").split("\n\n")[0]
        try:
            field = self._field(stanza, "Depends")
        except SetupError:
            return []
        return [alternative.split("|")[0].split("(")[0].strip() for alternative in field.split(",")]

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
