"""Image recipes as read from `images/*.yaml`."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.image.recipe import ImageRecipe


def test_recipe_accepts_dropbear_only(tmp_path):
    recipe = ImageRecipe.named("debian-arm64")
    assert recipe.ssh_server == "dropbear" and "dropbear-bin" in recipe.extra_packages
    text = Path("images/debian-arm64.yaml").read_text().replace("ssh_server: dropbear", "ssh_server: openssh")
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(UsageError, match="ssh_server"):
        ImageRecipe.load(tmp_path / "r.yaml")


def test_kvm_host_recipe_names_its_programs_qemu_build_and_guest_image():
    recipe = ImageRecipe.named("kvm-host")
    assert recipe.role == "kvm-host" and recipe.arch == "arm64"
    assert recipe.programs == ("usr/bin/qemu-system-aarch64", "usr/bin/qemu-img", "usr/bin/qemu-io")
    assert {"qemu-system-arm", "qemu-utils", "dropbear-bin"} <= set(recipe.extra_packages)
    assert recipe.qemu_builds == ("arm64",) and recipe.guest_images == ("debian-arm64",)
    assert "lab.swap=none" in recipe.kernel_append.split()


def test_guest_recipes_keep_the_defaults():
    recipe = ImageRecipe.named("debian-arm64")
    assert (recipe.role, recipe.programs, recipe.qemu_builds, recipe.guest_images) == ("guest", (), (), ())


@pytest.mark.parametrize(("line", "field"), [
    ("qemu_builds: [native]", "qemu_builds/0"),
    ("role: hypervisor", "role"),
    ("programs: [qemu-img]", "programs/0"),
    ("guest_images: [Debian_Arm64]", "guest_images/0"),
])
def test_host_fields_are_validated(tmp_path, line, field):
    text = Path("images/kvm-host.yaml").read_text()
    key = line.split(":")[0]
    kept = [existing for existing in text.splitlines() if not existing.startswith(f"{key}:")]
    (tmp_path / "r.yaml").write_text("\n".join([*kept, line]) + "\n")
    with pytest.raises(UsageError, match=rf"r\.yaml:\d+: {field}:"):
        ImageRecipe.load(tmp_path / "r.yaml")
