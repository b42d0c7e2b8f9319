"""eqmar.metrics."""
