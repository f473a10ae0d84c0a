"""How a training set is built from a real label budget and a synthetic proportion."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxdiv.configlib import param

Protocol = Literal["fixed_total", "added"]
PROTOCOLS = ("fixed_total", "added")


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """Fallbacks of the mixture builder. The protocol is a coordinate of each cell
    (`jaxdiv.mix.mixture.Cell.protocol`; in a study, `grid.protocols`)."""

    allow_short_classes: bool = param(
        False, help="if a class has fewer real or synthetic rows than asked, take what there is "
                    "(recorded in the mixture's manifest) instead of failing")
