"""The simulated swarm: a seeded synthetic population with known truth, served on loopback.

See swarmwatch.sim.population for the population API and swarmwatch.sim.trackers
for the HTTP/UDP trackers that serve it.
"""

from __future__ import annotations

from swarmwatch.clock import Clock, CompressedClock, ManualClock, SystemClock
from swarmwatch.sim.networks import CityNetworkIndex, build_index, load_index
from swarmwatch.sim.population import (
    ArrivingSwarm,
    Population,
    SimCity,
    SimPeer,
    SimulatedSwarm,
    diurnal_probability,
)

__all__ = [
    "ArrivingSwarm",
    "Population",
    "CityNetworkIndex",
    "Clock",
    "CompressedClock",
    "ManualClock",
    "SimCity",
    "SimPeer",
    "SimulatedSwarm",
    "SystemClock",
    "build_index",
    "diurnal_probability",
    "load_index",
]
