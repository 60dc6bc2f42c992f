"""Discovery's intervals as one value (conventions: "Timing is a value").

The defaults are the reference's (publish every 60 s, watchdog every 20-35 s, ...). Tests and
benchmarks shorten them with :meth:`DiscoveryTiming.scaled`; a node gets the factor from
``MESH_LLM_DISCOVERY_TIME_SCALE`` (read by the CLI only). The listing's 120 s expiration and
the discovery and probe timeouts are not intervals and are never scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh_llm.discovery.watchdog import WATCHDOG_INTERVAL_S, WATCHDOG_RECHECK_S

__all__ = ["DiscoveryTiming"]


@dataclass(frozen=True, slots=True)
class DiscoveryTiming:
    """Intervals in seconds."""

    publish_interval: float = 60.0
    """A publishing node republishes its listing (and checks the merge rule) this often."""
    watchdog_interval: tuple[float, float] = WATCHDOG_INTERVAL_S
    """The watchdog looks for a live listing of its mesh after a delay within these bounds."""
    watchdog_recheck: tuple[float, float] = WATCHDOG_RECHECK_S
    """Finding none, it looks again after a delay within these before taking over."""
    lonely_check: float = 30.0
    """An ``--auto`` node checks whether it has peers this often..."""
    lonely_after: float = 90.0
    """...and rediscovers after this long without any."""
    client_retry: float = 15.0
    """An ``--auto`` client that found no mesh discovers again after this."""

    def scaled(self, factor: float) -> DiscoveryTiming:
        """Every interval multiplied by ``factor``."""
        if not factor > 0:
            raise ValueError("scale factor must be positive")
        lo, hi = self.watchdog_interval
        rlo, rhi = self.watchdog_recheck
        return DiscoveryTiming(
            publish_interval=self.publish_interval * factor,
            watchdog_interval=(lo * factor, hi * factor),
            watchdog_recheck=(rlo * factor, rhi * factor),
            lonely_check=self.lonely_check * factor,
            lonely_after=self.lonely_after * factor,
            client_retry=self.client_retry * factor,
        )
