"""Imports every built-in objective module so that each registers itself."""
from . import auxiliary, dpo, listwise, margin, reference_free, sft, token_level, unpaired, wrappers  # noqa: F401
from . import flex  # noqa: F401
from ..reward import objectives as _reward_objectives  # noqa: F401,E402  (bradley_terry)
