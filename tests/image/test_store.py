"""The image cache: what goes into an image's cache key and its recorded inputs."""

from __future__ import annotations

import dataclasses

from lab.image.recipe import ImageRecipe
from lab.image.store import _cache_key


def test_extra_packages_change_the_cache_key():
    recipe = ImageRecipe.named("debian-arm64")
    assert _cache_key(recipe, []) != _cache_key(dataclasses.replace(recipe, extra_packages=()), [])


def test_extra_packages_and_their_dependencies_are_inputs_of_the_image_once(default_image):
    names = [i["package"] for i in default_image.manifest["inputs"] if "package" in i]
    assert names[names.index("busybox-static") + 1] == "dropbear-bin"
    assert {"libc6", "libtomcrypt1", "libtommath1", "libgmp10", "zlib1g", "libcrypt1"} <= set(names)
    assert len(names) == len(set(names))
