"""Statistics some objectives need beyond summed log-probs, computed only when asked for.

An objective lists what it reads in ``Objective.needs``; :data:`SUPPLIED` is what the trainer
can compute. Each supplier below adds fields or ``extras`` to the stats of one micro-batch:

* ``kl_pairs`` (KTO): log-probs of mismatched prompt/completion pairs (each prompt with the
  next example's completion), policy and reference, without gradient;
* ``degraded`` (SPO, P01): the policy's log-probs of K degraded copies of each chosen response
  (random tokens dropped, :func:`preftune.objectives.auxiliary.degrade_levels`), with gradient;
* ``sparse_reference_masks`` (SparsePO, P25): token masks from the reference model's hidden
  activations (:func:`preftune.objectives.token_level.activation_mask`);
* ``log_sum_sq_probs`` (WPO's aligned weight): ``log sum_v p(v)^2`` of the policy at every response
  position, without gradient, the LM head applied in chunks so full logits never exist;
* ``token_kl`` (SparsePO's sequential KL term, P25 eq. 8, as TDPO): ``KL(pi_ref(.|ctx) || pi(.|ctx))``
  over the whole vocabulary at every response position, with gradient through the policy: the policy's
  final hidden states kept from its log-prob forward (no second forward), the reference's, and both heads applied in checkpointed chunks so no ``[tokens, vocab]`` tensor
  outlives its chunk (:func:`token_kl`);
* ``sparse_learned_masks`` (SparsePO with ``mask='learned'``, P25 sec. 3.2): a
  :class:`~preftune.objectives.token_level.SparseMaskHead` on the policy's final hidden states gives the
  reward and KL masks. The head is a trainable module the trainer owns (:func:`need_modules`): it is
  in the optimizer, in every checkpoint (``extra_modules.safetensors``) and in ``final/``. The hidden
  states are those the policy's log-prob forward kept;
* ``density_ratio`` (BCO's UDM, P56 sec. 4.2): once, before training, every prompt is embedded by the
  *reference* model (mean of its last-layer hidden states over the prompt tokens; the paper uses a
  separate sentence-embedding model), a logistic-regression classifier separates the prompts of
  desirable from undesirable examples (:func:`preftune.objectives.unpaired.fit_density_ratio`), and
  each example gets ``extras['density_ratio']`` (:func:`attach_density_ratios`). The reference does
  not change during training, so a resumed run gets the same weights;
* ``token_logps``, ``chosen_lengths`` and the data columns are filled by the stats builder itself.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import torch

from ..data.collate import collate_unpaired
from ..data.types import SequenceBatch, TokenizedUnpaired
from ..errors import ConfigError
from ..models.logprobs import sequence_logps

DATA_COLUMNS = ("margin", "score_chosen", "score_rejected", "weight")
NEEDS_POLICY_STATES = frozenset({"token_kl", "sparse_learned_masks"})  # read the policy's final hidden states
SUPPLIED = frozenset({"token_logps", "chosen_lengths", "kl_pairs", "degraded", "sparse_reference_masks",
                      "log_sum_sq_probs", "density_ratio", "token_kl", "sparse_learned_masks", *DATA_COLUMNS})


def check_supported(objective: Any, reference: Any = None) -> None:
    """Refuse, before any work, an objective that needs what the trainer cannot supply."""
    missing = sorted(set(objective.needs) - SUPPLIED)
    if missing:
        raise ConfigError(
            f"objective '{objective.name}' needs {', '.join(missing)}, which `preftune train` does not compute yet; "
            "call the objective from your own loop with those stats (see docs/objectives.md), or choose an option "
            f"of the objective that does not need them (see `preftune objectives {objective.name}`)")
    if "sparse_reference_masks" in objective.needs and reference is not None \
            and not hasattr(reference, "hidden_states"):
        raise ConfigError(f"objective '{objective.name}' derives token masks from the reference model's "
                          f"activations; the reference source '{reference.kind}' has none: use --ref model "
                          "(or adapter under LoRA)")
    if "token_kl" in objective.needs and reference is not None and not hasattr(reference, "label_states"):
        raise ConfigError(f"objective '{objective.name}' needs the reference's distribution over the vocabulary "
                          f"at every token; the reference source '{reference.kind}' has no model: use --ref model "
                          "(or adapter under LoRA)")
    if "density_ratio" in objective.needs and reference is not None and not hasattr(reference, "hidden_states"):
        raise ConfigError(f"objective '{objective.name}' (udm) embeds prompts with the reference model; the "
                          f"reference source '{reference.kind}' has no model: use --ref model (or adapter under LoRA)")


def mismatched(items: Sequence[Any]) -> list[Any]:
    """KTO's KL pairs: each prompt with the next example's completion (a cyclic shift)."""
    n = len(items)
    return [replace(items[i], completion_ids=items[(i + 1) % n].completion_ids) for i in range(n)]


def _spo_objective(objective: Any) -> Any:
    """The SPO term inside a composition or wrapper (it declares ``ratios()``)."""
    stack = [objective]
    while stack:
        o = stack.pop()
        if hasattr(o, "ratios") and "degraded" in o.needs:
            return o
        stack += [t for _, t in getattr(o, "terms", [])]
        if getattr(o, "base_objective", None) is not None:
            stack.append(o.base_objective)
    raise ConfigError(f"objective '{objective.name}' needs degraded responses but declares no degradation ratios")


def degraded_batch(objective: Any, items: Sequence[Any], pad_id: int, generator: torch.Generator
                   ) -> tuple[SequenceBatch, int]:
    from ..objectives.auxiliary import degrade_levels

    ratios = _spo_objective(objective).ratios()
    seqs = []
    for it in items:
        for ids in degrade_levels(it.chosen_ids, ratios, generator):
            seqs.append(TokenizedUnpaired(it.prompt_ids, ids, True, it.row))
    return collate_unpaired(seqs, pad_id), len(ratios)


@torch.no_grad()
def log_sum_sq_probs(model: Any, batch: SequenceBatch, chunk_size: int = 1024) -> torch.Tensor:
    """``[S, T]``: ``log sum_v p(v | context)^2`` at each response position of each sequence, 0 elsewhere
    (any layout: each label's context is read off the batch's mask)."""
    from ..models.loading import unwrap
    from ..models.logprobs import _model_inputs, label_sources

    base = unwrap(model)
    hidden = base.get_decoder()(**_model_inputs(batch, model)).last_hidden_state
    head = base.get_output_embeddings()
    r, t, src = label_sources(batch)
    h = hidden[r, src]
    vals = [torch.logsumexp(2 * torch.log_softmax(head(h[i:i + chunk_size]).float(), dim=-1), dim=-1)
            for i in range(0, h.shape[0], chunk_size)]
    R, T = batch.input_ids.shape
    rows = torch.zeros(R, T, dtype=torch.float32, device=hidden.device)
    if vals:
        rows[r, t] = torch.cat(vals)
    return rows[batch.seq_row] * batch.seq_mask


def _kl_chunk(pol_head: Callable, ref_head: Callable, hp: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(pol_head(hp), dim=-1)
    with torch.no_grad():
        lr = torch.log_softmax(ref_head(hr), dim=-1)
    return (lr.exp() * (lr - lp)).sum(-1)


def _policy_states(model: Any, batch: SequenceBatch, states: torch.Tensor | None) -> torch.Tensor:
    """The policy's label-predicting final hidden states: those its log-prob forward kept, else a forward."""
    if states is not None:
        return states
    from ..reference import label_states

    return label_states(model, batch)


def token_kl(model: Any, reference: Any, batch: SequenceBatch, chunk_size: int = 1024,
             policy_states: torch.Tensor | None = None) -> torch.Tensor:
    """``[S, T]``: ``KL(pi_ref(.|ctx) || pi(.|ctx))`` at each response position of each sequence, 0 elsewhere;
    differentiable in the policy. Chunks of ``chunk_size`` positions are checkpointed, so their logits are
    recomputed in backward instead of kept. ``policy_states``: the policy's label states if already computed
    (``sequence_logps(..., keep_states=True)``), saving a forward."""
    from torch.utils.checkpoint import checkpoint

    from ..models.logprobs import head_fn, label_sources

    r, t, _ = label_sources(batch)
    hp = _policy_states(model, batch, policy_states)
    hr = reference.label_states(batch)
    pol_head, ref_head = head_fn(model), reference.output_head()
    grad = torch.is_grad_enabled() and hp.requires_grad
    vals = [checkpoint(_kl_chunk, pol_head, ref_head, hp[i:i + chunk_size], hr[i:i + chunk_size],
                       use_reentrant=False) if grad else _kl_chunk(pol_head, ref_head, hp[i:i + chunk_size],
                                                                   hr[i:i + chunk_size])
            for i in range(0, hp.shape[0], chunk_size)]
    R, T = batch.input_ids.shape
    rows = torch.zeros(R, T, dtype=torch.float32, device=hp.device)
    if vals:
        rows = rows.index_put((r, t), torch.cat(vals))
    return rows[batch.seq_row] * batch.seq_mask


def need_modules(objective: Any, model: Any) -> torch.nn.ModuleDict:
    """Trainable modules an objective needs beside the policy (empty for most)."""
    mods: dict[str, torch.nn.Module] = {}
    if "sparse_learned_masks" in objective.needs:
        from ..models.loading import unwrap
        from ..objectives.token_level import SparseMaskHead

        with torch.random.fork_rng(devices=[]):  # its init is fixed (zero weights, bias 3); keep the run's RNG as is
            mods["sparse_mask_head"] = SparseMaskHead(unwrap(model).config.hidden_size)
    return torch.nn.ModuleDict(mods)


def learned_masks(model: Any, head: Any, batch: SequenceBatch, policy_states: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(reward_mask, kl_mask)`` ``[S, T]`` from ``head`` on the policy's final hidden state that predicts
    each response token (any layout); differentiable in the head and the policy."""
    from ..models.logprobs import label_sources

    r, t, _ = label_sources(batch)
    h = _policy_states(model, batch, policy_states)
    R, T = batch.input_ids.shape
    rows = torch.zeros(R, T, h.shape[-1], dtype=h.dtype, device=h.device).index_put((r, t), h)
    return head(rows[batch.seq_row], batch.seq_mask)


def supply(objective: Any, stats: Any, *, model: Any, reference: Any, batch: SequenceBatch, items: Sequence[Any],
           collate: Callable[[Sequence[Any]], SequenceBatch], pad_id: int, chunk_size: int,
           generator: torch.Generator, modules: Any = None, policy_states: torch.Tensor | None = None) -> None:
    """Fill what ``objective.needs`` beyond the basic stats, in place. ``policy_states``: the policy's
    label-predicting hidden states from its log-prob forward (see :data:`NEEDS_POLICY_STATES`)."""
    needs = set(objective.needs)
    device = batch.input_ids.device
    if "kl_pairs" in needs:
        kl = collate(mismatched(items)).to(device)
        with torch.no_grad():
            stats.kl_policy_logps = sequence_logps(model, kl, chunk_size=chunk_size).sums
            ref = reference.logps(kl) if reference is not None else None
            stats.kl_reference_logps = ref.sums if ref is not None else None
    if "degraded" in needs:
        deg, K = degraded_batch(objective, items, pad_id, generator)
        out = sequence_logps(model, deg.to(device), chunk_size=chunk_size)
        B = len(items)
        stats.extras["degraded_logps"] = out.sums.view(B, K)
        stats.extras["degraded_lengths"] = out.lengths.view(B, K)
    if "log_sum_sq_probs" in needs:
        lss = log_sum_sq_probs(model, batch, chunk_size)
        B = batch.num_examples
        stats.extras["chosen_log_sum_sq_probs"] = lss[:B]
        stats.extras["rejected_log_sum_sq_probs"] = lss[B:]
    if "token_kl" in needs:
        kl = token_kl(model, reference, batch, chunk_size, policy_states)
        B = batch.num_examples
        stats.extras["chosen_token_kl"] = kl[:B]
        stats.extras["rejected_token_kl"] = kl[B:]
    if "sparse_learned_masks" in needs:
        head = modules["sparse_mask_head"] if modules is not None and "sparse_mask_head" in modules else None
        if head is None:
            raise ValueError(f"objective '{objective.name}' learns its token masks: pass modules="
                             "need_modules(objective, model) (the trainer does)")
        rm, km = learned_masks(model, head, batch, policy_states)
        B = batch.num_examples
        stats.extras.update(chosen_reward_mask=rm[:B], rejected_reward_mask=rm[B:], chosen_kl_mask=km[:B],
                            rejected_kl_mask=km[B:])
    if "sparse_reference_masks" in needs:
        from ..objectives.token_level import activation_mask

        layers = reference.hidden_states(batch)
        masks = activation_mask([h[batch.seq_row] for h in layers], batch.seq_mask)
        B = batch.num_examples
        stats.extras["chosen_reward_mask"] = masks[:B]
        stats.extras["rejected_reward_mask"] = masks[B:]


@torch.no_grad()
def prompt_embeddings(reference: Any, prompts: Sequence[Sequence[int]], pad_id: int, device: Any,
                      batch_size: int = 32) -> torch.Tensor:
    """``[N, H]``: the reference model's last-layer hidden states averaged over each prompt's tokens."""
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[i:i + batch_size]]
        # a one-token stand-in response: the collate wants one; its state is not pooled
        batch = collate_unpaired([TokenizedUnpaired(p, p[-1:] or [pad_id], True) for p in chunk], pad_id).to(device)
        last = reference.hidden_states(batch)[-1]  # shifted: position t + 1 holds the state of token t
        out += [last[r, 1:len(p) + 1].float().mean(0).cpu() for r, p in enumerate(chunk)]
    return torch.stack(out)


def attach_density_ratios(objective: Any, reference: Any, train_items: Sequence[Any],
                          other_items: Sequence[Any], pad_id: int, device: Any) -> dict[str, float] | None:
    """BCO's UDM weights (P56 eq. 12): fit the prompt classifier on the training examples and write
    ``extras['density_ratio'] = p_D(x) / p_U(x)`` into every training and ``other`` (eval) example.
    Returns a summary for the run info, or None when the objective does not need it."""
    if "density_ratio" not in objective.needs:
        return None
    from ..objectives.unpaired import fit_density_ratio

    labels = [bool(it.label) for it in train_items]
    if all(labels) or not any(labels):
        raise ConfigError(f"objective '{objective.name}' with udm=True fits a classifier between the prompts of "
                          "desirable and undesirable examples; the training data has only "
                          f"{'desirable' if all(labels) else 'undesirable'} ones")
    everything = list(train_items) + list(other_items)
    keys = list(dict.fromkeys(tuple(it.prompt_ids) for it in everything))
    index = {k: i for i, k in enumerate(keys)}
    emb = prompt_embeddings(reference, keys, pad_id, device)
    train_emb = emb[[index[tuple(it.prompt_ids)] for it in train_items]]
    lab = torch.tensor(labels)
    ratio = fit_density_ratio(train_emb[lab], train_emb[~lab])(emb)
    for it in everything:
        it.extras["density_ratio"] = float(ratio[index[tuple(it.prompt_ids)]])
    r = torch.tensor([it.extras["density_ratio"] for it in train_items])
    return {"prompts": len(keys), "min": float(r.min()), "mean": float(r.mean()), "max": float(r.max())}
