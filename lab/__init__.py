"""The hibernation lab: boot guests, hibernate them, watch how they power off, resume, judge."""

__version__ = "0.1.0"
