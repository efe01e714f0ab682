"""Judging: observations in, witnesses and a verdict out.

Pure functions over recorded data. May import only lab.errors, lab.vocabulary, lab.rundir and
lab.events: nothing here starts a process or talks to QEMU (tests/test_layers.py checks it).
"""
