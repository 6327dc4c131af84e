"""cljax: continual learning in JAX."""
from cljax import nn, types

__all__ = ["nn", "types"]
