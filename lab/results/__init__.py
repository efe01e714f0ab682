"""The lab's nightly memory: an index of run directories (the truth), and what it tells across nights.

Nothing here launches a process: it reads run and matrix directories and a database. May import
lab.rundir, lab.events, lab.paths, lab.yaml_file and lab.errors (pyproject.toml's contracts, checked by
tests/test_layers.py); lab.fleet and lab.nightly use it.
"""

DATABASE_FILE = "results.sqlite"
"""The embedded store's file, in the runs directory."""
KNOWN_ISSUES_FILE = "known-issues.yaml"
"""The known issues the lab applies by default, in the runs directory."""
