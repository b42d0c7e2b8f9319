"""Task applications built on eqmar's shared components (like ``monai.apps``).

- :mod:`eqmar.apps.mar`: CT metal artifact reduction on SynDeepLesion-style data.
"""
