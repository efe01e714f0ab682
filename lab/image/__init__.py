"""Guest images: Debian packages in, a kernel, an initramfs and a blank swap disk out.

One concern a module: `recipe` (image recipes, `images/*.yaml`), `debian` (the private apt
configuration and .deb files), `closure` (the ELF library closure), `modules`
(kernel modules and their dependencies), `keys` (the SSH server and its keys), `initramfs` (cpio
archives), `payload` (what a lab host image carries from the build host: the lab's QEMU build and
guest images), `guest_image` (a built image and its manifest) and `store` (the image cache, the build
that assembles the initramfs, and `find_image`). May import: lab.errors, lab.paths, lab.vocabulary,
lab.yaml_file.
Nothing here boots a guest.
"""
