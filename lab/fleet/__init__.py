"""Many runs: matrices of scenarios by kernels, personalities and accelerators, the engines that
run their cells, and the pytest plugin that turns scenario files into test items.

Sits on top of everything else but lab.nightly (whose `lab bisect` runs scenarios); nothing below imports it.
"""
