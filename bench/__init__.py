"""Benchmarks run by `swarmwatch bench <name>`: each prints its figures and returns them."""
