#!/usr/bin/env python
"""Synthesize metal-artifact CT data in the SynDeepLesion layout: ``eqmar-synthesize`` run from a checkout.

Every option is that of :mod:`eqmar.data.cli` (``--help``).
"""

from __future__ import annotations

import sys

from eqmar.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
