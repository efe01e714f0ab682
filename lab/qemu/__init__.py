"""QEMU builds: the ones a lab knows (Debian's, the lab's own patched build), what each reports, and
`lab qemu build`, which makes the patched one from Debian's source and the series in `qemu/patches/`.

May import: lab.errors, lab.paths, lab.deadline, lab.vocabulary, lab.machine (to probe a build
over QMP), lab.image.debian (the private apt that fetches the source), lab.judge.off2_contract.
"""
