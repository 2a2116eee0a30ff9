"""Numbers as the report prints them: each to the precision its uncertainty allows."""

from __future__ import annotations

import math


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def decimals(spread: float | None, value: float | None = None) -> int:
    """Decimals that show a number to the precision its uncertainty allows: two significant
    digits of the stderr, between 3 and 6 decimals. Without a stderr, 3 decimals, or 3
    significant digits for a small number (an nll of 0.0012 must not print as 0.001)."""
    if spread is not None and not math.isnan(spread) and not math.isinf(spread) and spread > 0:
        return max(3, min(6, 1 - math.floor(math.log10(spread))))
    if value is not None and not math.isnan(value) and 0 < abs(value) < 0.01:
        return min(6, 2 - math.floor(math.log10(abs(value))))
    return 3


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if _missing(value) else f"{value:.{digits}f}"


def fmt_value(value: float | None, stderr: float | None, digits: int | None = None) -> str:
    """``0.903 ± 0.012``; just the value where there is no stderr. ``digits`` overrides the
    decimals (a table row printed to one precision)."""
    if _missing(value):
        return "n/a"
    digits = decimals(stderr, value) if digits is None else digits
    if _missing(stderr):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {stderr:.{digits}f}"


def fmt_signed(delta: float, spread: float | None, value: float | None = None) -> str:
    """A signed difference to the precision of ``spread`` (``+0.050``, ``-0.0012``); an exact
    zero prints as ``0`` in that precision, never as ``-0.000`` or ``+0.000``."""
    digits = decimals(spread, value if value is not None else delta)
    if delta == 0 or round(delta, digits) == 0:
        return f"{0:.{digits}f}" if delta == 0 else f"{delta:+.{digits + 1}f}"
    return f"{delta:+.{digits}f}"


def fmt_interval(low: float, high: float, spread: float | None) -> str:
    """``[-0.041, +0.012]``: a confidence interval of a difference."""
    if _missing(low) or _missing(high):
        return ""
    return f"[{fmt_signed(low, spread)}, {fmt_signed(high, spread)}]"


def fmt_p(p: float) -> str:
    """A p-value: two significant digits, ``<0.001`` below that."""
    if _missing(p):
        return ""
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.2g}" if p < 0.1 else f"p={p:.2f}"


def level_text(level: float) -> str:
    """0.95 → ``95%``; 0.995 → ``99.5%``."""
    return f"{level * 100:g}%"
