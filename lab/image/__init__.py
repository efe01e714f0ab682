"""Guest images: Debian packages in, a kernel, an initramfs and a blank swap disk out.

One concern a module: `recipe` (image recipes, `images/*.yaml`), `debian` (the private apt
configuration and .deb files), `closure` (the ELF library closure), `modules`
(kernel modules and their dependencies), `keys` (the SSH server and its keys), `initramfs` (cpio
archives), `payload` (what a lab host image carries from the build host: the lab's QEMU build and
guest images), `guest_image` (a built image and its manifest) and `store` (the image cache, the build
that assembles the initramfs, and `find_image`). Nothing here boots a guest.
What it may import is the layers contract in pyproject.toml, checked by import-linter
(tests/test_layers.py).
"""
