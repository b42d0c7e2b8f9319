"""eqmar.ct."""
