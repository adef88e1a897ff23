"""``tars_perturbed_logps`` / ``tars_embeddings`` (TARS, P55): the forward on token-perturbed responses that
TARS's loss reads. A fraction ``adv_p`` of the pair's tokens (never bos/eos/pad) is replaced by random tokens (or
masked) with :func:`preftune.objectives.wrappers.tars_perturb_tokens`, seeded by the step; the policy (with
gradient) and the reference score the perturbed sequences over their unperturbed response tokens. With
``beta_fre > 0`` the input embeddings for the spectral triplet term are added: the policy's of the perturbed
chosen sequence, the reference's of the clean chosen and rejected sequences, zero at padding. Text-only: no
token-to-image similarity, so tokens are drawn uniformly (the authors' random variant)."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..data.collate import collate_pairs
from ..models.loading import unwrap
from ..models.logprobs import sequence_logps
from ..objectives.base import walk
from .base import MicroBatch, Supplier, register_supplier, require_reference_model


def _tars(objective: Any) -> Any:
    return next(o for o in walk(objective) if o.name == "tars")


def _input_embeddings(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return unwrap(model).get_input_embeddings()(ids).float() * mask.unsqueeze(-1).to(torch.float32)


@register_supplier
class TARSPerturbed(Supplier):
    provides = ("tars_perturbed_logps", "tars_embeddings")

    def check(self, objective: Any, reference: Any) -> None:
        if _tars(objective).beta_fre > 0:
            require_reference_model(objective, reference, "hidden_states",
                                    "(beta_fre > 0) reads the reference model's input embeddings")

    def supply(self, stats: Any, step: MicroBatch) -> None:
        from ..objectives.wrappers import tars_perturb_tokens

        tars = _tars(step.objective)
        items, _ = step.need_items("token-perturbed copies of the responses")
        device = step.batch.input_ids.device
        clean = collate_pairs(items, step.pad_id)  # one sequence per row: positions are the sequence's own
        cfg = unwrap(step.model).config
        ignore = tuple(i for i in (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id, step.pad_id)
                       if isinstance(i, int))
        vocab = int(unwrap(step.model).get_output_embeddings().weight.shape[0])
        ids, mask, _ = tars_perturb_tokens(clean.input_ids, clean.seq_mask, ratio=tars.adv_p, mode=tars.token_mode,
                                           vocab_size=vocab, ignore_ids=ignore, mask_token_id=step.pad_id,
                                           generator=step.generator)
        pert = dataclasses.replace(clean, input_ids=ids, seq_mask=mask).to(device)
        B = len(items)
        pol = sequence_logps(step.model, pert, chunk_size=step.chunk_size).sums
        stats.extras["tars_policy_chosen_logps"], stats.extras["tars_policy_rejected_logps"] = pol[:B], pol[B:]
        ref = step.reference.logps(pert) if step.reference is not None else None
        if ref is not None:
            stats.extras["tars_reference_chosen_logps"] = ref.sums[:B]
            stats.extras["tars_reference_rejected_logps"] = ref.sums[B:]
        if tars.beta_fre > 0:
            attn = pert.attention_mask
            stats.extras["tars_policy_chosen_embeds"] = _input_embeddings(step.model, pert.input_ids[:B], attn[:B])
            with torch.no_grad():
                c = clean.to(device)
                ref_model = step.reference.model
                stats.extras["tars_reference_chosen_embeds"] = _input_embeddings(ref_model, c.input_ids[:B],
                                                                                 c.attention_mask[:B])
                stats.extras["tars_reference_rejected_embeds"] = _input_embeddings(ref_model, c.input_ids[B:],
                                                                                   c.attention_mask[B:])
