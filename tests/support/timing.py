"""How far a bounded wait may overrun in a test: the suite runs on a loaded two-core machine.

Timings themselves are printed by benchmarks/, never asserted; tests assert order, and bounds that stay far
below what the fault they guard against would cost (a wait that never ends, or runs to a longer timeout).
"""

LOADED_HOST_SLACK = 10.0
"""Seconds a wait may overrun its own timeout when other work shares the two cores."""
