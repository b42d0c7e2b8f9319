"""eqmar.data."""
