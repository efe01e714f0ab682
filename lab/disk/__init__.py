"""The guest's swap disk seen from the host: the hibernation header, the lab's disk lock, and which
paths may be taken for a disk (`paths`: regular files; devices only when forced).

May import: lab.errors, lab.vocabulary. Uses QEMU's own disk tools, so raw and qcow2 work alike.
"""
