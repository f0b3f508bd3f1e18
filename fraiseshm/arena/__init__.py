"""The shared-memory cache arena: one bounded, crash-safe store for every worker on the host.

Layout, invariants, lock order and crash recovery: fraiseshm/arena/layout.py.
"""

from fraiseshm.arena.layout import CLASS_SIZES, LAYOUT_VERSION, Counter, FlightRole, FlightState
from fraiseshm.arena.segment import Arena

__all__ = ["CLASS_SIZES", "LAYOUT_VERSION", "Arena", "Counter", "FlightRole", "FlightState"]
