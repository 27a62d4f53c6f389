"""Synchronous data parallelism over a device mesh, within one process or across several."""
