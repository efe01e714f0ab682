"""What a run leaves for people and CI: result.json, the terminal lines, junit.xml, report.html, reproduce.sh.

Reads and writes the run directory; starts no process.
What it may import is the layers contract in pyproject.toml, checked by import-linter
(tests/test_layers.py).
"""
