"""The guest's swap disk seen from the host: the hibernation header and the lab's disk lock.

May import: lab.errors, lab.vocabulary. Uses QEMU's own disk tools, so raw and qcow2 work alike.
"""
