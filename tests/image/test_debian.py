"""Debian packages as apt and dpkg-deb describe them: stanzas, relation fields, a user's .deb file.

`data/apt-cache-show-arm64.txt` is real `apt-cache show --no-all-versions` output from the lab's
private apt (arm64, unstable first): a kernel metapackage, the kernel packages it leads to (7.x
split into binary and modules, 6.12 in one), dropbear-bin, libc6, python3-yaml and busybox-static.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from debian.deb822 import PkgRelation

from lab.digest import sha256_file
from lab.errors import SetupError, UsageError
from lab.image.debian import Candidate, PrivateApt, local_package, pinned_relations, stanzas
from lab.image.guest_image import GuestImage
from lab.image.recipe import ImageRecipe
from lab.image.store import ImageStore

APT_CACHE_SHOW = Path(__file__).parent / "data" / "apt-cache-show-arm64.txt"


@pytest.fixture(scope="module")
def candidates() -> dict[str, Candidate]:
    found = [Candidate.of(stanza, "arm64") for stanza in stanzas(APT_CACHE_SHOW.read_text())]
    return {c.package.name: c for c in found}


def test_each_stanza_of_apt_cache_show_is_one_candidate(candidates):
    assert list(candidates) == [
        "linux-image-cloud-arm64", "linux-image-7.2.13+deb14-cloud-arm64", "linux-image-6.12.117+deb13-cloud-arm64",
        "dropbear-bin", "libc6", "python3-yaml", "busybox-static",
    ]


def test_a_candidate_is_the_archive_package_by_version_sha256_and_file_name(candidates):
    busybox = candidates["busybox-static"].package
    assert busybox.spec == "busybox-static:arm64=1:1.38.0-3+b1"
    assert busybox.sha256 == "968d1aa8f579fa1ac59c26afa365454369e13cf29848e6400b50028fed0ffda0"
    assert busybox.filename == "busybox-static_1.38.0-3+b1_arm64.deb"
    assert candidates["busybox-static"].depends == []


def test_the_kernel_metapackage_pins_the_versioned_kernel(candidates):
    assert candidates["linux-image-cloud-arm64"].depends == [
        ("linux-base-cloud-arm64", "7.2.13-1"),
        ("linux-image-7.2.13+deb14-cloud-arm64", "7.2.13-1"),
    ]


def test_alternatives_give_their_first_and_exact_versions_are_pinned(candidates):
    assert candidates["linux-image-7.2.13+deb14-cloud-arm64"].depends == [
        ("dracut", None),
        ("linux-base-7.2.13+deb14-cloud-arm64", "7.2.13-1"),
        ("linux-binary-7.2.13+deb14-cloud-arm64", "7.2.13-1"),
        ("linux-modules-7.2.13+deb14-cloud-arm64", "7.2.13-1"),
    ]
    assert candidates["linux-image-6.12.117+deb13-cloud-arm64"].depends == [
        ("kmod", None), ("initramfs-tools", None),
    ]


def test_lower_bounds_with_epochs_pin_nothing(candidates):
    assert candidates["dropbear-bin"].depends == [
        ("libc6", None), ("libcrypt1", None), ("libtomcrypt1", None), ("libtommath1", None), ("zlib1g", None),
    ]
    assert candidates["libc6"].depends == [("libgcc-s1", None), ("libc-gconv-modules-extra", "2.43-7")]


def test_arch_qualifiers_are_dropped_and_upper_bounds_pin_nothing(candidates):
    assert candidates["python3-yaml"].depends == [
        ("python3", None), ("python3", None), ("python3", None), ("libc6", None), ("libyaml-0-2", None),
    ]


@pytest.mark.parametrize(("field", "expected"), [
    ("foo:any (= 1.2) | bar (= 2)", [("foo", "1.2")]),
    ("foo:arm64 (>= 1), bar (<= 2), baz (>> 3), qux (<< 4)", [("foo", None), ("bar", None), ("baz", None),
                                                              ("qux", None)]),
    ("libc6 (>= 2.38),\n libcrypt1 (= 1:4.1.0-1)", [("libc6", None), ("libcrypt1", "1:4.1.0-1")]),
])
def test_pinned_relations(field, expected):
    assert pinned_relations(PkgRelation.parse_relations(field)) == expected


def test_a_stanza_without_its_sha256_is_an_error():
    text = "".join(line for line in APT_CACHE_SHOW.read_text().splitlines(keepends=True)
                   if not line.startswith("SHA256:"))
    with pytest.raises(SetupError, match="apt-cache show gave no SHA256 field"):
        Candidate.of(stanzas(text)[0], "arm64")


def test_a_version_debian_does_not_serve_is_an_error_naming_the_versions_it_does(tmp_path, monkeypatch):
    """apt-cache show prints nothing and exits 0 for an unknown version of a known package."""
    def apt(self, tool: str, *args: str, **_: object) -> str:
        if args[0] == "madison":
            return "linux-image-cloud-arm64 | 7.2.13-1 | http://deb.debian.org/debian unstable/main arm64 Packages\n"
        return APT_CACHE_SHOW.read_text().split("\n\n")[0] + "\n" if "=0.0-1" not in " ".join(args) else ""

    monkeypatch.setattr(PrivateApt, "_run", apt)
    private = PrivateApt(tmp_path, "unstable", "arm64")
    assert len(private.show([("linux-image-cloud-arm64", None)], "arm64")) == 1
    unknown = r"no linux-image-cloud-arm64:arm64=0\.0-1 in Debian .*versions there: 7\.2\.13-1"
    with pytest.raises(SetupError, match=unknown):
        private.show([("linux-image-cloud-arm64", "0.0-1")], "arm64")


def _deb(tmp_path: Path, control: str) -> Path:
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(control)
    deb = tmp_path / "linux-image-test.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


CONTROL = """\
Package: linux-image-7.2.0-test-arm64
Version: 7.2.0-1~lab
Architecture: arm64
Maintainer: The Lab <lab@example.org>
Depends: kmod, linux-base (>= 4.3~)
Description: a user's kernel
 Built by hand, as a bug report's kernel may be.
"""


def test_a_users_deb_is_described_from_its_control_file(tmp_path):
    deb = _deb(tmp_path, CONTROL)
    package = local_package(deb, "arm64")
    assert package.spec == "linux-image-7.2.0-test-arm64:arm64=7.2.0-1~lab"
    assert (package.sha256, package.filename) == (sha256_file(deb), deb.name)


def test_a_users_deb_for_another_arch_or_no_deb_at_all_is_refused(tmp_path):
    with pytest.raises(UsageError, match="is for arm64, the image is amd64"):
        local_package(_deb(tmp_path, CONTROL), "amd64")
    (tmp_path / "not.deb").write_text("hello\n")
    with pytest.raises(UsageError, match=r"not\.deb is not a Debian package: dpkg-deb"):
        local_package(tmp_path / "not.deb", "arm64")
    with pytest.raises(UsageError, match="no such kernel package"):
        local_package(tmp_path / "missing.deb", "arm64")


def test_two_users_of_one_private_apt_take_turns(default_image: GuestImage) -> None:
    """Two lab processes on one private apt (two test workers, a matrix and a build): apt-cache waits while the
    other holds its turn, as an update rewriting the lists would, and goes on when the turn ends."""
    recipe = ImageRecipe.named(default_image.name)
    holder, reader = ImageStore().apt_for(recipe), ImageStore().apt_for(recipe)
    pool = ThreadPoolExecutor(1)
    try:
        with holder._turn():
            versions = pool.submit(reader.versions, "busybox-static", recipe.arch)
            with pytest.raises(TimeoutError):
                versions.result(timeout=5)
        assert versions.result(timeout=120), "no busybox-static in the lists"
    finally:
        pool.shutdown()
