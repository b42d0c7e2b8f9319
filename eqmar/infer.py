"""``python -m eqmar.infer``: metal artifact reduction of stored CT images (also installed as ``eqmar-infer``).

The command line lives with the MAR app, in :mod:`eqmar.apps.mar.cli`; see its documentation.
"""

from __future__ import annotations

import sys

from eqmar.apps.mar.cli import InferenceInputError, build_parser, main

__all__ = ["InferenceInputError", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
