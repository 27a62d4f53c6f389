"""Device meshes and multi-process set-up (jax.distributed); the `sync` strategy uses them."""
