"""QEMU builds: the ones a lab knows (Debian's, the lab's own patched build) and what each reports
(`builds`), and `lab qemu build`, which makes the patched one from Debian's source and the series in
`qemu/patches/` (`recipe`: what a build is made of; `builder`: carrying it out).

What it may import is the layers contract in pyproject.toml, checked by import-linter
(tests/test_layers.py).
"""
