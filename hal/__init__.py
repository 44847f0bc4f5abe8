"""Hardware abstraction layer: device specs, latency and energy probes, measurement cache, remote probe."""
