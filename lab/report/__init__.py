"""What a run leaves for people and CI: result.json, the terminal lines, junit.xml, report.html, reproduce.sh.

Reads and writes the run directory; starts no process. May import: lab.errors, lab.vocabulary,
lab.rundir, lab.events, lab.judge, lab.machine.spec (to rebuild QEMU command lines for replay).
"""
