"""The fleet simulator: virtual-time driver, in-process transport, simulated
network and compute, metrics and reports. docs/simulation.md explains the design."""
