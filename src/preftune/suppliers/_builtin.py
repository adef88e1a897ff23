"""The built-in suppliers; import order is supply order."""
from . import kl_pairs  # noqa: F401  (KTO)
from . import degraded  # noqa: F401  (SPO)
from . import log_sum_sq_probs  # noqa: F401  (WPO)
from . import token_kl  # noqa: F401  (SparsePO, sequential KL)
from . import label_states  # noqa: F401  (SparsePO, learned masks)
from . import sparse_reference_masks  # noqa: F401  (SparsePO, activation masks)
from . import density_ratio  # noqa: F401  (BCO, UDM)
