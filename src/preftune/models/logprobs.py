"""Per-token log-probabilities of response tokens, without materialising full logits.

The decoder runs once; the LM head is then applied only at *label positions* (the tokens
of some response: prompt and padding positions never get logits), in chunks of
``chunk_size`` positions. Under autograd a custom autograd function keeps, per label, only
the hidden state and the log-normaliser; each chunk's ``[chunk, vocab]`` float32 logits are
recomputed in the backward pass and turned into the logits' gradient in place, so the peak
memory of the head is about one chunk, not ``[batch, time, vocab]``.

The hidden state that predicts label ``t`` is the latest position ``t' < t`` that ``t`` may
attend to: ``t - 1`` with a 2D padding mask; in block layouts (prefix-shared, packed) the
first rejected token is predicted from the last *prompt* token, read off the 4D mask.

``full_logits=True`` takes the plain path (``model(...).logits``, log-softmax, gather);
tests use it to prove the chunked path equal, and models whose forward does more than
``lm_head(hidden)`` (other than Gemma-style soft-capping, handled here) can use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..data.types import SequenceBatch
from .loading import unwrap

DEFAULT_CHUNK = 1024


@dataclass
class SeqLogps:
    """``sums[s]``: summed log-prob of sequence s's response; ``lengths[s]``: its token count;
    ``token_logps`` ``[S, T]`` per-token values (zero outside ``mask``) when asked for."""

    sums: Tensor
    lengths: Tensor
    mask: Tensor
    token_logps: Tensor | None = None
    label_states: Tensor | None = None  # [N, H] final hidden state predicting each label (label_sources order)
    logit_sums: Tensor | None = None    # [S] sum over response tokens and the vocabulary of the logits (no grad)
    vocab_size: int = 0


def _attn_implementation(model: Any) -> str:
    cfg = getattr(unwrap(model), "config", None)
    return getattr(cfg, "_attn_implementation", None) or "sdpa"


def model_inputs(batch: SequenceBatch, model: Any = None) -> dict[str, Any]:
    """The keyword arguments of a forward pass over ``batch`` (ids, mask, positions; no KV cache).

    A 4D boolean block mask (prefix-shared, packed layouts) becomes an additive float mask in
    the model's dtype; a 2D padding mask passes through unchanged."""
    mask = batch.attention_mask
    if mask.dim() == 4 and mask.dtype == torch.bool:
        impl = _attn_implementation(model) if model is not None else "sdpa"
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"block layouts (prefix_shared, packed) need attn_implementation 'sdpa' or 'eager'; "
                             f"the model uses '{impl}'. Use layout=padded, or load the model with sdpa.")
        # An additive float mask, made once per forward: eager attention needs one, and SDPA would
        # otherwise convert the boolean mask again in every layer.
        dtype = next(unwrap(model).parameters()).dtype if model is not None else torch.float32
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    kw: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": mask, "use_cache": False}
    if batch.position_ids is not None:
        kw["position_ids"] = batch.position_ids
    return kw


def label_positions(batch: SequenceBatch) -> tuple[Tensor, Tensor]:
    """(row, time) indices of every token that is a response token of some sequence and has
    a token before it to be predicted from."""
    r, t, _ = label_sources(batch)
    return r, t


def label_sources(batch: SequenceBatch) -> tuple[Tensor, Tensor, Tensor]:
    """(row, time, source time): label ``(r, t)`` is predicted by the hidden state at ``(r, source)``."""
    R, T = batch.input_ids.shape
    counts = torch.zeros(R, T, dtype=torch.int32, device=batch.seq_mask.device)
    counts.index_add_(0, batch.seq_row, batch.seq_mask.to(torch.int32))
    counts[:, 0] = 0  # position 0 has no context; it is never a label
    r, t = counts.nonzero(as_tuple=True)
    if batch.attention_mask.dim() != 4:
        return r, t, t - 1
    allowed = batch.attention_mask[r, 0, t].bool()                    # [N, T] keys each label may see
    k = torch.arange(T, device=allowed.device)
    earlier = allowed & (k.unsqueeze(0) < t.unsqueeze(1))
    src = torch.where(earlier, k.unsqueeze(0), -1).amax(-1)
    keep = src >= 0   # a response right at the start of its unit (empty prompt) has no context
    return r[keep], t[keep], src[keep]


def head_fn(model: Any, *, base_weights: bool = False) -> Callable[[Tensor], Tensor]:
    """The output head as a float-logits function (soft-capped where the model does). ``base_weights``:
    when peft wraps the head in LoRA, its frozen base layer -- the head under ``disable_adapter``."""
    base = unwrap(model)
    head = base.get_output_embeddings()
    if base_weights:
        head = getattr(head, "base_layer", head)
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        return lambda h: torch.tanh(head(h).float() / cap) * cap
    return lambda h: head(h).float()


# Below this many logits (4M floats, 16 MiB) the head keeps its softmax for the backward pass instead of recomputing
# the logits there: one matmul fewer per step when the labels x vocabulary are small (an online GRPO batch of 512
# labels over a 4k vocabulary), and no more memory than one default chunk of a 4k vocabulary.
KEEP_SOFTMAX_ELEMENTS = 1 << 22


class _LinearTargetLogps(torch.autograd.Function):
    """``log_softmax(softcap(h @ W.T + b))[y]`` in row chunks; saves only ``h`` and the
    log-normaliser, recomputes each chunk's logits in backward (unless all the logits are fewer than
    :data:`KEEP_SOFTMAX_ELEMENTS`: then the softmax is kept)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int,
                cap: float | None) -> tuple[Tensor, Tensor]:
        N = hidden.shape[0]
        out = torch.empty(N, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(N, dtype=torch.float32, device=hidden.device)
        zsum = torch.empty(N, dtype=torch.float32, device=hidden.device)  # for TRL's logits/* metrics
        keep = not cap and N * weight.shape[0] <= KEEP_SOFTMAX_ELEMENTS and any(ctx.needs_input_grad[:3])
        probs = []
        for i in range(0, N, chunk):
            z = _linear_logits(hidden[i:i + chunk], weight, bias, cap)
            lse[i:i + chunk] = torch.logsumexp(z, dim=-1)
            zsum[i:i + chunk] = z.sum(-1)
            out[i:i + chunk] = z.gather(-1, targets[i:i + chunk].unsqueeze(-1)).squeeze(-1) - lse[i:i + chunk]
            if keep:
                probs.append(z.sub_(lse[i:i + chunk].unsqueeze(-1)).exp_())
        ctx.save_for_backward(hidden, weight, bias, targets, lse, *probs)
        ctx.chunk, ctx.cap = chunk, cap
        ctx.mark_non_differentiable(zsum)
        return out, zsum

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_zsum: Tensor | None = None):  # type: ignore[override]
        hidden, weight, bias, targets, lse, *probs = ctx.saved_tensors
        chunk, cap = ctx.chunk, ctx.cap
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        g = grad_out.float()
        for c, i in enumerate(range(0, hidden.shape[0], chunk)):
            h = hidden[i:i + chunk]
            gi = g[i:i + chunk].unsqueeze(-1)
            # d out / d z = onehot(y) - softmax(z); times the incoming gradient
            if probs:  # the kept softmax (left intact: a retained graph may run backward again)
                d = probs[c].mul(gi.neg())
                d.scatter_add_(-1, targets[i:i + chunk].unsqueeze(-1), gi)
            else:  # recomputed, in place
                raw = F.linear(h, weight, bias).float()
                if cap:
                    th = torch.tanh(raw / cap)
                    d = (th * cap).sub_(lse[i:i + chunk].unsqueeze(-1)).exp_()
                else:
                    d = raw.sub_(lse[i:i + chunk].unsqueeze(-1)).exp_()
                d.scatter_add_(-1, targets[i:i + chunk].unsqueeze(-1),
                               torch.full((d.shape[0], 1), -1.0, device=d.device))
                d.mul_(gi.neg())
                if cap:
                    d.mul_(th.mul_(th).neg_().add_(1.0))
            dz = d.to(weight.dtype)
            if grad_h is not None:
                torch.mm(dz, weight, out=grad_h[i:i + chunk])
            if grad_w is not None:
                grad_w.addmm_(dz.t().float(), h.float())
            if grad_b is not None:
                grad_b += d.sum(0)
        return (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None, None, None, None)


def _linear_logits(h: Tensor, weight: Tensor, bias: Tensor | None, cap: float | None) -> Tensor:
    z = F.linear(h, weight, bias).float()
    if cap:
        z = torch.tanh(z / cap) * cap
    return z


def chunked_target_logps(head: Callable[[Tensor], Tensor] | torch.nn.Linear, hidden: Tensor, targets: Tensor,
                         chunk_size: int = DEFAULT_CHUNK, *, softcap: float | None = None,
                         logit_sums: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """``log softmax(head(hidden))[targets]`` for ``hidden`` ``[N, H]``, ``chunk_size`` rows at a time.

    ``head`` is an ``nn.Linear`` (fast path: custom autograd, optional ``softcap``) or any
    callable returning float logits (checkpointed per chunk). ``logit_sums``: also return each row's
    sum of logits over the vocabulary ``[N]`` (no gradient), from the same chunks."""
    if hidden.shape[0] == 0:
        z = hidden.new_zeros(0, dtype=torch.float32)
        return (z, z.clone()) if logit_sums else z
    if type(head) is torch.nn.Linear:
        lp, zsum = _LinearTargetLogps.apply(hidden, head.weight, head.bias, targets, chunk_size, softcap)
        return (lp, zsum) if logit_sums else lp
    grad = torch.is_grad_enabled() and hidden.requires_grad
    out, sums = [], []
    for i in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[i:i + chunk_size], targets[i:i + chunk_size]
        lp, zs = checkpoint(_target_logps_sums, head, h, y, use_reentrant=False) if grad \
            else _target_logps_sums(head, h, y)
        out.append(lp)
        sums.append(zs)
    return (torch.cat(out), torch.cat(sums)) if logit_sums else torch.cat(out)


def _target_logps_sums(head: Callable[[Tensor], Tensor], h: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    logits = head(h)
    lp = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return lp, logits.detach().sum(-1)


def _head(model: Any) -> tuple[Any, float | None]:
    base = unwrap(model)
    head = base.get_output_embeddings()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if type(head) is torch.nn.Linear:
        return head, cap
    return head_fn(model), None


def token_logps(model: Any, batch: SequenceBatch, *, chunk_size: int = DEFAULT_CHUNK,
                full_logits: bool = False) -> Tensor:
    """``[R, T]`` float32: entry ``(r, t)`` is ``log p(x_t | context)`` at label positions, 0 elsewhere."""
    return _token_logps(model, batch, chunk_size, full_logits)[0]


def _token_logps(model: Any, batch: SequenceBatch, chunk_size: int, full_logits: bool
                 ) -> tuple[Tensor, Tensor | None, Tensor, int]:
    """Per-token log-probs ``[R, T]``, the final hidden states that predict the labels ``[N, H]`` (None on the
    full-logits path), each label position's sum of logits over the vocabulary ``[R, T]`` (no gradient) and
    the vocabulary size."""
    R, T = batch.input_ids.shape
    r, t, src = label_sources(batch)
    if full_logits:
        logits = model(**model_inputs(batch, model)).logits.float()
        logp = F.log_softmax(logits, dim=-1)
        sel = logp[r, src].gather(-1, batch.input_ids[r, t].unsqueeze(-1)).squeeze(-1)
        zsum = torch.zeros(R, T, dtype=torch.float32, device=logits.device).index_put(
            (r, t), logits[r, src].detach().sum(-1))
        return (torch.zeros(R, T, dtype=torch.float32, device=logits.device).index_put((r, t), sel), None, zsum,
                logits.shape[-1])
    from .hidden import decoder_hidden  # hidden.py builds on this module

    states = decoder_hidden(model, batch)[r, src]
    head, cap = _head(model)
    sel, sums = chunked_target_logps(head, states, batch.input_ids[r, t], chunk_size, softcap=cap, logit_sums=True)
    lp = torch.zeros(R, T, dtype=torch.float32, device=states.device)
    zsum = torch.zeros(R, T, dtype=torch.float32, device=states.device).index_put((r, t), sums)
    vocab = _vocab_size(model)
    return lp.index_put((r, t), sel), states, zsum, vocab


def _vocab_size(model: Any) -> int:
    base = unwrap(model)
    w = getattr(base.get_output_embeddings(), "weight", None)
    return int(w.shape[0]) if isinstance(w, Tensor) else int(getattr(base.config, "vocab_size", 0) or 0)


def sequence_logps(model: Any, batch: SequenceBatch, *, per_token: bool = False,
                   chunk_size: int = DEFAULT_CHUNK, full_logits: bool = False, keep_states: bool = False) -> SeqLogps:
    """Summed response log-probs per sequence (and per-token values if ``per_token``; the label-predicting
    final hidden states if ``keep_states``, for needs such as SparsePO's token KL and learned masks).
    ``logit_sums``: each sequence's logits summed over its response tokens and the vocabulary (TRL's
    ``logits/chosen`` is their mean), computed from the same chunks at no extra matmul."""
    lp, states, zsum, vocab = _token_logps(model, batch, chunk_size, full_logits)
    out = gather_sequences(lp, batch, per_token=per_token)
    out.logit_sums = (zsum[batch.seq_row] * batch.seq_mask).sum(-1)
    out.vocab_size = vocab
    if keep_states:
        out.label_states = states
    return out


def gather_sequences(lp: Tensor, batch: SequenceBatch, *, per_token: bool = False) -> SeqLogps:
    """Turn row-wise per-token log-probs ``[R, T]`` into per-sequence sums (layout-independent)."""
    mask = batch.seq_mask
    per_seq = lp[batch.seq_row] * mask
    return SeqLogps(sums=per_seq.sum(-1), lengths=mask.sum(-1), mask=mask,
                    token_logps=per_seq if per_token else None)


