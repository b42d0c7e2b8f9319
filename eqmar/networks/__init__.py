"""eqmar.networks."""
