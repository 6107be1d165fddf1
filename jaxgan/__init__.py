"""jaxgan: GANs in JAX/Flax."""
