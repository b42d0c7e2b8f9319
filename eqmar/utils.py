"""Small helpers shared by eqmar's command-line tools."""

from __future__ import annotations

__all__ = ["parse_index_ranges"]


def parse_index_ranges(text: str | None) -> list[int] | None:
    """Parse ``"0-79"`` or ``"0,3,5-7"`` into a list of ints; None stays None.

    Raises:
        ValueError: for a malformed part or a descending range, naming it.
    """
    if text is None:
        return None
    indices: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                low, high = (int(v) for v in part.split("-", 1))
                if high < low:
                    raise ValueError
                indices.extend(range(low, high + 1))
            else:
                indices.append(int(part))
        except ValueError:
            raise ValueError(f"cannot read index range {part!r} in {text!r} (expected e.g. 0-79 or 0,3,5-7)") from None
    return indices
