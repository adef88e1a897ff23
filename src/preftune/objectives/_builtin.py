"""Imports every built-in objective module so that each registers itself."""
from . import auxiliary, dpo, listwise, margin, reference_free, sft, token_level, unpaired, wrappers  # noqa: F401
from . import flex  # noqa: F401
from . import gpo  # noqa: F401  (P31 GPO)
from . import distill  # noqa: F401  (P60 DCKD, ADPA)
from . import soft_preference  # noqa: F401  (P28 OSP's soft-preference cross-entropy, spce)
from ..reward import objectives as _reward_objectives  # noqa: F401,E402  (bradley_terry)
from ..reward import robust_objectives as _robust_reward_objectives  # noqa: F401,E402  (P67: rm_flip_margin, rm_simcse, ...)
from ..online import objectives as _online_objectives, ppo as _online_ppo, hypo as _online_hypo  # noqa: F401,E402,E501
from ..online import selfplay as _online_selfplay  # noqa: F401,E402
from ..online import egpo as _online_egpo  # noqa: F401,E402  (P47 EGPO's online IPO loss, egpo)
