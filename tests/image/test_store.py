"""The image cache: what goes into an image's cache key and its recorded inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lab.errors import SetupError
from lab.image.guest_image import GuestImage
from lab.image.payload import CarriedFile, Payload
from lab.image.recipe import ImageRecipe
from lab.image.store import ImageStore, _cache_key, picked_by_runs


def test_extra_packages_change_the_cache_key():
    recipe = ImageRecipe.named("debian-arm64")
    assert _cache_key(recipe, []) != _cache_key(dataclasses.replace(recipe, extra_packages=()), [])


def test_extra_packages_and_their_dependencies_are_inputs_of_the_image_once(default_image):
    names = [i["package"] for i in default_image.manifest["inputs"] if "package" in i]
    assert names[names.index("busybox-static") + 1] == "dropbear-bin"
    assert {"libc6", "libtomcrypt1", "libtommath1", "libgmp10", "zlib1g", "libcrypt1"} <= set(names)
    assert len(names) == len(set(names))


def _plain_recipe(init: Path) -> ImageRecipe:
    init.write_bytes(b"#!/bin/busybox sh\n")
    return ImageRecipe(name="x", arch="arm64", suite="unstable", kernel_package="linux-image-cloud-arm64",
                       userland_package="busybox-static", modules=("virtio_blk",), swap_size_mib=512,
                       kernel_append="console=ttyAMA0", init_script=init)


def test_images_that_use_no_host_field_keep_the_key_they_had_before_those_fields(tmp_path):
    assert _cache_key(_plain_recipe(tmp_path / "init"), []) == "045ee94a11f1ef5d"


@pytest.mark.parametrize("change", [
    {"role": "kvm-host"}, {"programs": ("usr/bin/qemu-img",)}, {"qemu_builds": ("arm64",)},
    {"guest_images": ("debian-arm64",)},
])
def test_each_host_field_changes_the_key(tmp_path, change):
    recipe = _plain_recipe(tmp_path / "init")
    assert _cache_key(dataclasses.replace(recipe, **change), []) != _cache_key(recipe, [])


def test_what_an_image_carries_is_part_of_its_key(tmp_path):
    recipe = _plain_recipe(tmp_path / "init")
    qemu = CarriedFile(tmp_path / "q", "a" * 64, 4, ("opt/lab-qemu/bin/qemu-system-aarch64",), 0o755)
    rebuilt = dataclasses.replace(qemu, sha256="b" * 64)
    keys = {_cache_key(recipe, [], Payload(files)) for files in ((), (qemu,), (rebuilt,))}
    assert len(keys) == 3
    assert _cache_key(recipe, [], Payload()) == _cache_key(recipe, [])


def test_a_recipe_with_a_qemu_build_needs_someone_to_build_it(tmp_path):
    recipe = dataclasses.replace(ImageRecipe.named("kvm-host"), guest_images=())
    store = ImageStore(tmp_path)
    with pytest.raises(SetupError, match="lab host build kvm-host"):
        store.payload(recipe)
    asked: list[str] = []

    def builder(target: str) -> Path:
        asked.append(target)
        raise SetupError("no compiler here")

    with pytest.raises(SetupError, match="no compiler"):
        store.payload(recipe, qemu_builder=builder)
    assert asked == ["arm64"]


def test_a_guest_image_to_carry_must_be_built(tmp_path):
    recipe = dataclasses.replace(ImageRecipe.named("kvm-host"), qemu_builds=())
    with pytest.raises(SetupError, match="carries guest image debian-arm64, which is not built: run `lab images build"):
        ImageStore(tmp_path).payload(recipe)


def test_runs_pick_the_newest_build_with_the_recipe_s_own_kernel_and_say_so(tmp_path):
    """A build pinned to another kernel, however new, is not what a run boots by default, and says so."""
    def image(name: str, built: str, pin: str | None) -> GuestImage:
        return GuestImage(tmp_path / f"{name}-{built}", {"name": name, "built": built, "kernel_pin": pin})

    pinned = image("debian-arm64", "3", "linux-image-cloud-arm64=6.12.117-1")
    own, older = image("debian-arm64", "2", None), image("debian-arm64", "1", None)
    other = image("debian-amd64", "1", None)
    picked = picked_by_runs([pinned, own, older, other])
    assert picked == {"debian-arm64": own, "debian-amd64": other}
    assert own.describe_use(True) == "runs pick this" and older.describe_use(False) == "an older build"
    assert pinned.describe_use(False) == ("pinned to linux-image-cloud-arm64=6.12.117-1: runs with "
                                          "--kernel-deb linux-image-cloud-arm64=6.12.117-1")
