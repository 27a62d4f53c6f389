"""pdist: distributed training research in JAX — single device, data-parallel, parameter server."""

__version__ = "0.1.0"
