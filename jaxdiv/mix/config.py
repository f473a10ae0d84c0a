"""How a training set is built from a real label budget and a synthetic proportion."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxdiv.configlib import param

Protocol = Literal["fixed_total", "added"]


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """Mixing protocol and fallbacks.

    Protocols, per class, for a label budget b and a synthetic proportion p:
      fixed_total: the set holds b rows, round(p * b) synthetic replacing real ones
                   (p = 0: b real rows; p = 1: b synthetic rows).
      added:       all b real rows are kept and round(p * b) synthetic rows are added
                   (p is the synthetic amount relative to the real budget; p = 1 doubles it).
    """

    protocol: Protocol = param("fixed_total", help="fixed_total (synthetic replaces real) or added")
    allow_short_classes: bool = param(
        False, help="if a class has fewer real or synthetic rows than asked, take what there is "
                    "(recorded in the mixture's manifest) instead of failing")
