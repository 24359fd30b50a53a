"""Units of information: the bound and every estimate are computed in nats and
reported in bits, converted once with these."""

from __future__ import annotations

import math

LN2 = math.log(2.0)  # nats per bit


def bits(nats):
    """Nats to bits. Shapes: any -> same."""
    return nats / LN2
