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
