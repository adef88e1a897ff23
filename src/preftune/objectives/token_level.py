"""SparsePO (P25): token-level masks on the reward and KL terms of DPO, as the authors' code computes it.

Verified against the authors' code, huawei-noah/HEBO@ee6112d39d1a9e9703fecaf9057193e1ec9dae72, folder
``SparsePO/``:

* ``src/trainers/sparse_trainer.py``, ``SparseTrainer.get_batch_loss_metrics`` (learned masks, the loss and
  the L1 penalty) with ``SparseTrainer.__init__`` (the L1 halving) and ``src/trainers/sparse_config.py``
  (``SparseConfig``: names and defaults);
* ``src/masks/mask_models.py``, ``SimpleMaskAllLayers`` / ``SimpleMaskLayer`` / ``apply_masked_rescaling``
  (the mask head) with ``src/masks/pipeline_gpt_neox.py``, ``PipelineWrapNL.forward`` (what it reads) and
  ``src/alignment/utils.py``, ``get_sparse_pipeline`` (common or independent heads);
* ``src/trainers/mapo_trainer.py``, ``MAPOTrainer.mapo_loss`` / ``apply_activation_mapping`` /
  ``concatenated_forward`` (reference-activation masks, "MaPO") with ``mapo_config.py``.

Loss, per pair (``sparse_trainer.py``; the paper's eq. 6-8)::

    u = sum_t m^u_w,t h_w,t - sum_t m^u_l,t h_l,t              h = log pi - log pi_ref per token
    d = sum_t m^d_l,t KL_l,t - sum_t m^d_w,t KL_w,t            KL_t = KL(pi_ref(.|ctx_t) || pi(.|ctx_t))
    loss = -log sigmoid(beta * (u - d))
           + l1_norm_param_u * (|m^u_w|_1 + |m^u_l|_1) + l1_norm_param_d * (|m^d_w|_1 + |m^d_l|_1)

The masked token-level (TDPO-style sequential) KL term ``d`` is always part of the authors' loss; preftune's
``kl_term='none'`` (d = 0, masked DPO) is an ablation the authors do not have. With a shared mask
(``mask_on_reward`` and ``mask_on_kl`` and not ``rw_kl_independent``) both L1 weights are halved, as the
authors do ("make up for double adding"). ``mask_on_reward=False`` / ``mask_on_kl=False`` leave that term
unmasked (mask 1). ``beta`` multiplies u - d only, not the L1 terms.

Masks (``extras``, [B, T], zero outside the response):

* ``mask='learned'`` (needs ``"reference_layer_states"``: the *reference* model's hidden states of every
  layer at each response position, ``[B, T, L, H]``): the objective's own :class:`SparseMaskHead`
  (``sparse_mask_head``, built by :meth:`SparsePO.bind` from the policy's config), the authors'
  ``SimpleMaskAllLayers`` (their default ``mask_model='simple_all'``, and the only one of their mask models
  their ``get_sparse_pipeline`` can build): a shared LayerNorm, per layer ``act_layer(w_l . LN(h_l) + b_l)``,
  a bias-free mixer over the L layer scores, ``act_mixer``. With ReLU (the default) masks have exact zeros
  and are unbounded above. The masks read only the reference's states, so the policy gets no gradient
  through them (the authors pass the reference forward's ``hidden_states``, computed under ``no_grad``,
  as ``reference_states``); the head's parameters are trained with the policy and checkpointed by the
  trainer (``extra_modules.safetensors``). Cost: the supplier holds ``B*T*L*H`` reference activations per
  side (model dtype) -- e.g. 1 GiB a side for a 7B model at T=2048, B=1, bf16 -- so a long-context run
  may need smaller micro-batches.
* ``mask='reference'`` (needs ``"sparse_reference_masks"``): MaPO masks, :func:`activation_mask` of the
  reference's activations; one mask serves the reward and the KL term (``mapo_loss``).
* ``chosen_token_kl`` / ``rejected_token_kl`` (needs ``"token_kl"``): the authors' ``chosen_token_kl`` with
  the sign flipped (they keep ``sum_v p_ref (log pi - log p_ref)`` = -KL and subtract accordingly; the loss
  is the same).

Differences from the authors' code, on purpose:

* the mask head's dropout (``mask_dropout=0.01``) is left out: the authors' trainer calls
  ``disable_dropout_in_model`` on the whole pipeline (``disable_dropout=True`` by default), which zeroes it;
* ``mask_weight_decay`` (0.01 on the head) is not applied: preftune's optimizer uses one weight decay;
* the head is initialised as Hugging Face initialises the authors' (``_init_weights``: weights
  ``N(0, initializer_range)``, zero biases, LayerNorm 1/0) but from a fixed generator (seed 0), so the run's
  RNG is untouched and the init is reproducible;
* ``'resc'`` rescaling and MaPO's ``zn_rescale`` are computed in float32 (the authors round the std, min
  and max to float16), and a sequence whose values are all equal (or that has one response token) gets
  mask 1 where the authors' code gives NaN;
* MaPO's activations: the authors average four hook families (MLP, attention, residual stream, logits; their
  ``activation_hook='all'``); preftune reads what any Hugging Face decoder exposes -- every layer's output
  (the residual stream; the last one after the final norm) and the logits -- see :func:`activation_mask`.

The paper's full text (arXiv 2410.05102) was not available offline; the formulas above follow the code, which
agrees with the paper's abstract (masks on both the reward and the KL, reference-derived or learned, sparse).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Objective, ObjectiveOutput, PairStats, apply_weight, hp, register, require, require_extras, reward_metrics


# ----------------------------------------------------------------------------- reference (MaPO) masks

def zn_rescale(act: Tensor, mask: Tensor) -> Tensor:
    """MaPO's ``zn_rescale`` (``mapo_trainer.py``, ``apply_activation_mapping``) of one activation
    ``[S, T, D]``: the mean over D, z-normalised over each sequence's response tokens (mean and Bessel-corrected
    std), then min-max rescaled to [0, 1] over those tokens; zero outside ``mask``. ``[S, T]`` float32.
    A sequence whose values are all equal gets 1 on its response tokens (the authors' code gives NaN)."""
    m = mask.bool()
    x = act.float().mean(-1)
    n = m.sum(-1, keepdim=True).clamp(min=1)
    mean = x.masked_fill(~m, 0.0).sum(-1, keepdim=True) / n
    var = ((x - mean) ** 2).masked_fill(~m, 0.0).sum(-1, keepdim=True) / (n - 1).clamp(min=1)
    return masked_rescale((x - mean) / (var.sqrt() + 1e-12), mask)


def activation_mask(hidden_states: tuple[Tensor, ...] | list[Tensor], mask: Tensor,
                    logits: Tensor | None = None) -> Tensor:
    """MaPO (reference-activation) token mask, ``[S, T]`` in [0, 1], zero outside ``mask``.

    ``hidden_states``: the reference model's per-layer states ``[S, T, H]``, aligned so position t holds the
    state that predicts token t (empty to skip them); ``logits``: optionally its logits ``[S, T, V]`` at the
    same positions (only the response positions are read). As the authors (``concatenated_forward``): each
    activation is mapped with :func:`zn_rescale`, the maps of one family (here: the residual stream, i.e.
    every layer's output) are averaged, and the families (residual stream, logits) are averaged."""
    families = []
    if len(hidden_states):
        families.append(torch.stack([zn_rescale(h, mask) for h in hidden_states]).mean(0))
    if logits is not None:
        families.append(zn_rescale(logits, mask))
    if not families:
        raise ValueError("activation_mask needs hidden states or logits")
    return torch.stack(families).mean(0) * mask.bool()


# ----------------------------------------------------------------------------- learned masks

def masked_rescale(x: Tensor, mask: Tensor) -> Tensor:
    """The authors' ``apply_masked_rescaling`` on ``[B, T]``: min-max over each row's response tokens, zero
    outside ``mask`` (1 for a row whose values are all equal, where the authors' code gives NaN)."""
    m = mask.bool()
    lo = x.masked_fill(~m, float("inf")).amin(-1, keepdim=True)
    hi = x.masked_fill(~m, float("-inf")).amax(-1, keepdim=True)
    span = hi - lo
    flat = ~(span > 1e-12)
    out = torch.where(flat, torch.ones_like(x), (x - lo) / torch.where(flat, torch.ones_like(span), span))
    return out * m


def _activate(x: Tensor, mask: Tensor, activation: str) -> Tensor:
    if activation == "relu":
        return torch.relu(x)
    if activation == "resc":
        return masked_rescale(x, mask)
    return x


class MaskAllLayers(nn.Module):
    """The authors' ``SimpleMaskAllLayers`` (``src/masks/mask_models.py``), dropout left out.

    ``forward(states [B, T, L, H], mask [B, T]) -> [B, T]``: ``LN`` (one LayerNorm for every layer), per layer
    ``s_l = act_layer(w_l . LN(h_l) + b_l)``, then ``act_mixer(sum_l v_l s_l)`` (mixer without bias)."""

    def __init__(self, num_layers: int, hidden_size: int, *, eps: float = 1e-5, layer_activation: str = "relu",
                 mixer_activation: str = "relu"):
        super().__init__()
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.w_per_layer = nn.ModuleList([nn.Linear(hidden_size, 1) for _ in range(num_layers)])
        self.mixer = nn.Linear(num_layers, 1, bias=False)
        self.layer_activation = layer_activation
        self.mixer_activation = mixer_activation

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        if states.shape[-2] != len(self.w_per_layer):
            raise ValueError(f"the mask head reads {len(self.w_per_layer)} layers' states, got {states.shape[-2]}")
        x = self.layer_norm(states.to(self.layer_norm.weight.dtype))
        scores = [_activate(w(x[..., i, :]).squeeze(-1), mask, self.layer_activation)
                  for i, w in enumerate(self.w_per_layer)]
        h = self.mixer(torch.stack(scores, -1)).squeeze(-1)
        return _activate(h, mask, self.mixer_activation) * mask.to(h.dtype)


class SparseMaskHead(nn.Module):
    """SparsePO's learned masks: one :class:`MaskAllLayers` shared by the reward and KL masks (``common``), or
    one for each (``reward``, ``kl``) with ``independent`` (the authors' ``rw_kl_independent``), as
    ``get_sparse_pipeline`` builds them. ``forward(states, mask) -> (reward_mask or None, kl_mask or None)``
    (None: that term is not masked)."""

    def __init__(self, num_layers: int, hidden_size: int, *, eps: float = 1e-5, init_std: float = 0.02,
                 layer_activation: str = "relu", mixer_activation: str = "relu", on_reward: bool = True,
                 on_kl: bool = True, independent: bool = False, seed: int = 0):
        super().__init__()
        self.on_reward, self.on_kl, self.independent = on_reward, on_kl, independent
        kw = dict(eps=eps, layer_activation=layer_activation, mixer_activation=mixer_activation)
        names = ([n for n, on in (("reward", on_reward), ("kl", on_kl)) if on] if independent
                 else (["common"] if on_reward or on_kl else []))
        for n in names:
            setattr(self, n, MaskAllLayers(num_layers, hidden_size, **kw))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for mod in self.modules():  # Hugging Face's _init_weights, as the authors' pipeline gets it
                if isinstance(mod, nn.Linear):
                    mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * init_std)
                    if mod.bias is not None:
                        mod.bias.zero_()
                elif isinstance(mod, nn.LayerNorm):
                    mod.weight.fill_(1.0)
                    mod.bias.zero_()

    def forward(self, states: Tensor, mask: Tensor) -> tuple[Tensor | None, Tensor | None]:
        if self.independent:
            rm = self.reward(states, mask) if self.on_reward else None
            km = self.kl(states, mask) if self.on_kl else None
            return rm, km
        shared = self.common(states, mask) if (self.on_reward or self.on_kl) else None
        return (shared if self.on_reward else None), (shared if self.on_kl else None)


_ACTIVATIONS = ("relu", "resc", "none")


@register
@dataclass
class SparsePO(Objective):
    """SparsePO (P25; the authors' ``SparseTrainer`` / ``MAPOTrainer``): DPO with token-level reward and KL
    masks and the masked sequential KL term (see the module docstring for the formula, the masks, the
    statistics the trainer supplies and where this follows or leaves the authors' code)."""

    name = "sparse_po"
    paper = "P25 (SparsePO) eq. 6-8; huawei-noah/HEBO SparsePO/ @ee6112d"
    beta: float = hp(0.1, "inverse temperature (authors' default 0.1)", low=0.0, low_open=True)
    mask: str = hp("reference", "where the token masks come from: the reference's activations (MaPO) or the "
                   "learned head over the reference's hidden states of every layer", choices=("reference", "learned"))
    kl_term: str = hp("sequential", "the masked sequential KL term d, as the authors always have it; 'none' is "
                      "a preftune ablation (no per-token KL over the vocabulary)", choices=("sequential", "none"))
    activations: str = hp("resid,logits", "mask='reference': which activation families MaPO averages (the "
                          "authors' 'all' also has MLP and attention hook points, not available here)",
                          choices=("resid,logits", "resid", "logits"))
    mask_on_reward: bool = hp(True, "mask the reward term u (else unmasked)")
    mask_on_kl: bool = hp(True, "mask the KL term d (else unmasked)")
    rw_kl_independent: bool = hp(False, "mask='learned': separate heads for the reward and KL masks "
                                 "(default: one shared mask)")
    mask_layer_activation: str = hp("relu", "mask='learned': activation of each layer's score",
                                    choices=_ACTIVATIONS)
    mask_mixer_activation: str = hp("relu", "mask='learned': activation of the mixed mask (relu: exact zeros)",
                                    choices=_ACTIVATIONS)
    l1_norm_param_u: float = hp(0.0, "mask='learned': weight of the L1 norm of the reward masks (halved for a "
                                "shared mask)", low=0.0)
    l1_norm_param_d: float = hp(0.0, "mask='learned': weight of the L1 norm of the KL masks (halved for a "
                                "shared mask)", low=0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask == "reference" and (self.l1_norm_param_u or self.l1_norm_param_d):
            raise ConfigError("objective 'sparse_po': l1_norm_param_u / l1_norm_param_d penalise learned masks; "
                              "with mask='reference' the masks have no parameters (use mask='learned')")
        n = ["token_logps", "sparse_reference_masks" if self.mask == "reference" else "reference_layer_states"]
        if self.kl_term == "sequential":
            n.append("token_kl")
        self.needs = tuple(n)  # type: ignore[misc]
        self.sparse_mask_head: SparseMaskHead | None = None

    @property
    def l1_weights(self) -> tuple[float, float]:
        """The L1 weights the loss uses: halved for a shared mask, as ``SparseTrainer.__init__``."""
        u, d = float(self.l1_norm_param_u), float(self.l1_norm_param_d)
        if self.mask_on_reward and self.mask_on_kl and not self.rw_kl_independent:
            u, d = u / 2.0, d / 2.0
        return u, d

    def bind(self, model: Any) -> None:
        """``mask='learned'``: build the mask head (once) for the policy's number of layers and hidden size
        (the reference's: it is the policy's initial copy)."""
        if self.mask != "learned" or self.sparse_mask_head is not None:
            return
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = base.config
        eps = next((float(getattr(cfg, k)) for k in ("layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps")
                    if getattr(cfg, k, None) is not None), 1e-5)
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the run's RNG: keep it
            self.sparse_mask_head = SparseMaskHead(
                int(cfg.num_hidden_layers), int(cfg.hidden_size), eps=eps,
                init_std=float(getattr(cfg, "initializer_range", 0.02)),
                layer_activation=self.mask_layer_activation, mixer_activation=self.mask_mixer_activation,
                on_reward=self.mask_on_reward, on_kl=self.mask_on_kl, independent=self.rw_kl_independent)

    def _masks(self, stats: PairStats) -> dict[str, Tensor | None]:
        ex = stats.extras
        out: dict[str, Tensor | None] = {}
        if self.mask == "learned":
            if self.sparse_mask_head is None:
                raise ValueError("objective 'sparse_po' with mask='learned' has no mask head: call "
                                 "objective.bind(policy) first (the trainer does)")
            require_extras(stats, self.name, "chosen_reference_layer_states", "rejected_reference_layer_states")
            for side in ("chosen", "rejected"):
                states = ex[f"{side}_reference_layer_states"]
                rm, km = self.sparse_mask_head(states.detach(), getattr(stats, f"{side}_mask"))
                out[f"{side}_reward_mask"], out[f"{side}_kl_mask"] = rm, km
        else:
            require_extras(stats, self.name, "chosen_reward_mask", "rejected_reward_mask")
            for side in ("chosen", "rejected"):
                m = ex[f"{side}_reward_mask"]
                out[f"{side}_reward_mask"] = m if self.mask_on_reward else None
                out[f"{side}_kl_mask"] = ex.get(f"{side}_kl_mask", m) if self.mask_on_kl else None
        return out

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        require(stats, self.name, "policy_chosen_token_logps", "policy_rejected_token_logps",
                "reference_chosen_token_logps", "reference_rejected_token_logps")
        mk = self._masks(stats)
        resp = {s: getattr(stats, f"{s}_mask") for s in ("chosen", "rejected")}

        def weighted(values: Tensor, m: Tensor | None, side: str) -> Tensor:
            r = resp[side]
            v = values if m is None else m * values
            return (v * r.to(v.dtype)).sum(-1) if r is not None else v.sum(-1)

        hc_t = stats.policy_chosen_token_logps - stats.reference_chosen_token_logps  # type: ignore[operator]
        hr_t = stats.policy_rejected_token_logps - stats.reference_rejected_token_logps  # type: ignore[operator]
        uc = weighted(hc_t, mk["chosen_reward_mask"], "chosen")
        ur = weighted(hr_t, mk["rejected_reward_mask"], "rejected")
        u = uc - ur
        d = torch.zeros_like(u)
        m: dict[str, Tensor] = {}
        if self.kl_term == "sequential":
            require_extras(stats, self.name, "chosen_token_kl", "rejected_token_kl")
            kc = weighted(stats.extras["chosen_token_kl"], mk["chosen_kl_mask"], "chosen")
            kr = weighted(stats.extras["rejected_token_kl"], mk["rejected_kl_mask"], "rejected")
            d = kr - kc
            m["sparse/masked_kl_chosen"] = kc.detach().float().mean()
            m["sparse/masked_kl_rejected"] = kr.detach().float().mean()
        loss = -F.logsigmoid(self.beta * (u - d))
        if self.mask == "learned" and (self.l1_norm_param_u or self.l1_norm_param_d):
            l1u, l1d = self.l1_weights
            penalty = torch.zeros_like(loss)
            for side in ("chosen", "rejected"):
                for key, w in ((f"{side}_reward_mask", l1u), (f"{side}_kl_mask", l1d)):
                    if mk[key] is not None and w != 0:
                        penalty = penalty + w * weighted(mk[key].abs(), None, side)  # type: ignore[union-attr]
            loss = loss + penalty
            m["sparse/l1_penalty"] = penalty.detach().float().mean()
        m.update(reward_metrics(self.beta * uc, self.beta * ur, stats))
        for side in ("chosen", "rejected"):
            r = resp[side]
            if r is None:
                continue
            n = r.float().sum().clamp(min=1)
            for kind in ("reward", "kl"):
                mask = mk[f"{side}_{kind}_mask"]
                if mask is None:
                    continue
                mask = mask.detach().float()
                name = f"sparse/{side}_mask" if kind == "reward" else f"sparse/{side}_kl_mask"
                m[f"{name}_mean"] = (mask * r).sum() / n
                m[f"{name}_sparsity"] = ((mask == 0) & r.bool()).float().sum() / n  # authors' Weights/*_sparsity / 100
        return ObjectiveOutput(apply_weight(loss, stats.weight), m)
