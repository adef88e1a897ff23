"""The decoder's hidden states over a :class:`~preftune.data.types.SequenceBatch`, in any layout.

* :func:`decoder_hidden` -- the last (normed) hidden state ``[R, T, H]``: what the LM head reads;
* :func:`label_states` -- of those, the ones that predict a response token, ``[N, H]`` in
  :func:`~preftune.models.logprobs.label_sources` order (SparsePO's token KL, the reference's
  label states);
* :func:`aligned_hidden_states` -- every decoder layer's output ``[R, T, H]``, shifted so that
  position ``t`` holds the state that predicts token ``t``.

The forward pass takes its inputs from :func:`~preftune.models.logprobs.model_inputs`, so block
layouts (prefix-shared, packed) work as they do for the log-probs. The LM head itself is
:func:`~preftune.models.logprobs.head_fn`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..data.types import SequenceBatch
from .loading import unwrap
from .logprobs import label_sources, model_inputs


def decoder_hidden(model: Any, batch: SequenceBatch) -> Tensor:
    """Last hidden state ``[R, T, H]`` of the decoder (through a peft wrapper): what the LM head reads."""
    return unwrap(model).get_decoder()(**model_inputs(batch, model)).last_hidden_state


def label_states(model: Any, batch: SequenceBatch) -> Tensor:
    """``[N, H]``: the final (normed) hidden state that predicts each label, in ``label_sources`` order."""
    r, _, src = label_sources(batch)
    return decoder_hidden(model, batch)[r, src]


@torch.no_grad()
def aligned_hidden_states(model: Any, batch: SequenceBatch) -> list[Tensor]:
    """Per decoder layer ``[R, T, H]``, aligned so that position t holds the state that predicts token t
    (t - 1 in a padded row; in block layouts a label's source from the mask, e.g. the prompt's last
    token for the first rejected token)."""
    kw = {**model_inputs(batch, model), "output_hidden_states": True}
    hs = unwrap(model).get_decoder()(**kw).hidden_states[1:]
    r, t, src = label_sources(batch)
    out = []
    for h in hs:
        a = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
        a[r, t] = h[r, src]
        out.append(a)
    return out


__all__ = ["aligned_hidden_states", "decoder_hidden", "label_states"]
