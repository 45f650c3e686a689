"""Benchmarks run by `swarmwatch bench <name>`: each prints its figures and returns them.

A benchmark module has run_benchmark(**options) and may have missing() -> str | None,
which says in one line what it needs that this machine lacks.
"""

#: Modules here that are not benchmarks (`swarmwatch bench list` leaves them out).
HELPERS = ("server",)
