"""anycastlb: a YAML service catalog compiled into an anycast load-balancer fleet.

The package holds the pure core (catalog → per-node model → config text), the
checkers and the apply machinery, the CLI and the lab. Nothing here imports Salt:
the Salt modules under ``_modules``, ``_states`` and ``_pillar`` are thin adapters.
"""

__version__ = "0.1.0"
