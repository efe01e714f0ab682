"""Scenario files and the steps that drive a guest through them, recorded as observations.

`model` reads and validates scenario files; `guest` owns one guest's lifecycle (machine,
channels, PSCI session) with named states; `steps` drive it and record what they saw;
`run` ties one scenario run together and is where driving and judging meet, through
observations only. What it may import is the layers contract in pyproject.toml, checked by import-linter
(tests/test_layers.py).
"""
