"""System image recipes, their swap areas and boot arguments, and what building one needs, from the
shipped recipes and manifests as the builder writes them (no guest boots here)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab.errors import SetupError, UsageError
from lab.image import gpt
from lab.image.build_locks import recipe_build_lock
from lab.image.guest_image import GuestImage
from lab.image.recipe import ImageRecipe
from lab.image.system import SystemImageBuilder, require_builder
from lab.image.system_recipe import SystemRecipe, is_system_recipe
from lab.vocabulary import ImageOn, ResumeFrom

ROOT = {"label": "lab-root", "uuid": "6ceffe29-a164-5af5-9286-c367f95c4470", "offset": 68157440, "size": 2147483648}
SWAP = {"label": "lab-swap", "uuid": "409aa32f-e8a7-5407-bc15-5a7700938701", "offset": 2215641088, "size": 1073741824}
SYSTEM_MANIFEST = {
    "name": "debian-arm64-system", "arch": "arm64", "kind": "system", "kernel_append": "root=PARTUUID=x rw",
    "system": {
        "partitions": [ROOT, SWAP],
        "swap_file": {"path": "/swapfile", "size": 768 << 20, "resume_offset": 22554, "partition": "lab-root",
                      "offset": ROOT["offset"] + 22554 * 4096},
        "initramfs_generator": "initramfs-tools",
    },
}


@pytest.mark.parametrize("name", ["debian-arm64-system", "debian-amd64-system"])
def test_the_shipped_system_recipes_load(name: str) -> None:
    recipe = SystemRecipe.named(name)
    assert is_system_recipe(name) and not is_system_recipe("debian-arm64")
    assert {"systemd", "udev", "dbus", "initramfs-tools", "openssh-server"} <= set(recipe.packages)
    assert recipe.kernel_package.startswith("linux-image-cloud-")


def test_a_system_recipe_is_not_an_initramfs_recipe() -> None:
    with pytest.raises(UsageError, match="is a system image"):
        ImageRecipe.named("debian-arm64-system")
    with pytest.raises(UsageError, match="not a system image recipe"):
        SystemRecipe.named("debian-arm64")


def test_a_system_recipe_is_validated(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nkind: system\narch: arm64\nsuite: unstable\nkernel_package: k\npackages: [systemd]\n"
                      "disk: {esp_mib: 64, root_mib: 10, swap_partition_mib: 64, swap_file_mib: 64}\n"
                      "kernel_append: ''\n")
    with pytest.raises(UsageError, match="root_mib"):
        SystemRecipe.load(recipe)


def test_a_swap_partition_is_named_by_its_partuuid() -> None:
    image = GuestImage(Path("/nowhere"), SYSTEM_MANIFEST)
    area = image.swap_area(ImageOn.PARTITION)
    assert (area.disk_offset, area.size, area.guest_offset) == (SWAP["offset"], SWAP["size"], 0)
    assert area.guest_device == f"/dev/disk/by-partuuid/{SWAP['uuid']}"
    assert image.boot_arguments(area, ResumeFrom.CMDLINE) == f"lab.swap=partition resume=PARTUUID={SWAP['uuid']}"
    assert image.boot_arguments(area, ResumeFrom.INITRAMFS) == "lab.swap=partition"
    assert image.swap_template.name == "disk.raw" and image.initramfs.name == "initrd.img"


def test_a_swap_file_is_its_partition_and_first_block() -> None:
    image = GuestImage(Path("/nowhere"), SYSTEM_MANIFEST)
    area = image.swap_area(ImageOn.FILE)
    assert area.disk_offset == ROOT["offset"] + 22554 * gpt.BLOCK_SIZE
    assert area.guest_offset == 22554 * gpt.BLOCK_SIZE
    assert image.boot_arguments(area, ResumeFrom.CMDLINE) == \
        f"lab.swap=file resume=PARTUUID={ROOT['uuid']} resume_offset=22554"
    with pytest.raises(UsageError, match="a swap file needs `resume_from: cmdline`"):
        image.require_resume_path(area, ResumeFrom.INITRAMFS)


def test_a_busybox_guest_has_only_its_swap_disk() -> None:
    image = GuestImage(Path("/nowhere"), {"name": "debian-arm64", "arch": "arm64", "kernel_append": ""})
    area = image.swap_area()
    assert (area.size, area.guest_device, image.boot_arguments(area, ResumeFrom.CMDLINE)) == \
        (None, "/dev/vda", "lab.swap=vda")
    with pytest.raises(UsageError, match="needs a system image"):
        image.swap_area(ImageOn.FILE)
    with pytest.raises(UsageError, match="needs a system image"):
        image.require_resume_path(area, ResumeFrom.INITRAMFS)


def test_building_a_foreign_system_needs_arch_test_and_binfmt_misc(tmp_path: Path) -> None:
    recipe = SystemRecipe.named("debian-arm64-system")
    with pytest.raises(SetupError, match=r"needs arch-test .*: apt-get install arch-test$"):
        require_builder(recipe, binfmt=tmp_path, arch_test="no-such-arch-test")
    with pytest.raises(SetupError, match="binfmt_misc is not mounted: mount -t binfmt_misc"):
        require_builder(recipe, binfmt=tmp_path)
    (tmp_path / "status").write_text("enabled\n")
    with pytest.raises(SetupError, match="update-binfmts --enable qemu-aarch64"):
        require_builder(recipe, binfmt=tmp_path)
    (tmp_path / "qemu-aarch64").write_text("disabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n")
    with pytest.raises(SetupError, match="qemu-user-static binfmt-support"):
        require_builder(recipe, binfmt=tmp_path)


def test_efi_variable_resume_needs_uefi_and_systemd_in_the_initrd() -> None:
    tools = GuestImage(Path("/nowhere"), SYSTEM_MANIFEST)
    dracut_manifest = {**SYSTEM_MANIFEST, "name": "debian-arm64-system-dracut",
                       "system": {**SYSTEM_MANIFEST["system"], "initramfs_generator": "dracut"}}
    dracut = GuestImage(Path("/nowhere"), dracut_manifest)
    area = tools.swap_area(ImageOn.PARTITION)
    with pytest.raises(UsageError, match="needs UEFI"):
        dracut.require_resume_path(area, ResumeFrom.EFI_VARIABLE, uefi=False)
    with pytest.raises(UsageError, match="has none \\(use debian-arm64-system-dracut\\)"):
        tools.require_resume_path(area, ResumeFrom.EFI_VARIABLE, uefi=True)
    with pytest.raises(UsageError, match="initramfs is made by dracut"):
        dracut.require_resume_path(area, ResumeFrom.INITRAMFS)
    dracut.require_resume_path(area, ResumeFrom.EFI_VARIABLE, uefi=True)
    assert dracut.boot_arguments(area, ResumeFrom.EFI_VARIABLE) == "lab.swap=partition"


def test_builds_of_two_system_recipes_do_not_wait_for_each_other(
        system_image: GuestImage, system_x86_image: GuestImage) -> None:
    """While one recipe is being built (its lock held here), a build of another recipe goes ahead and finds its
    image, and a second build of the busy recipe waits for the first to end: bootstrap builds all three at once."""
    builder = SystemImageBuilder()
    pool = ThreadPoolExecutor(2)
    try:
        with recipe_build_lock(builder.cache, system_image.name):
            waiting = pool.submit(builder.build, SystemRecipe.named(system_image.name), log=lambda _: None)
            other, other_built = pool.submit(builder.build, SystemRecipe.named(system_x86_image.name),
                                             log=lambda _: None).result(timeout=120)
            assert (other.path, other_built) == (system_x86_image.path, False)
            assert not waiting.done(), "a second build of a recipe under way went ahead"
        busy, busy_built = waiting.result(timeout=120)
        assert (busy.path, busy_built) == (system_image.path, False)
    finally:
        pool.shutdown()
