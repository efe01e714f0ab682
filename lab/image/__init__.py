"""Guest images: Debian packages in, a kernel, an initramfs and a blank swap disk out.

Owns image recipes (`images/*.yaml`), the private apt configuration, the ELF library closure,
kernel modules, SSH keys, cpio assembly and the image cache. May import: lab.errors, lab.paths,
lab.vocabulary. Nothing here boots a guest.
"""
