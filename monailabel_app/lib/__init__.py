"""Components of the eqmar MAR MONAI Label app: inference and training tasks, transforms."""
