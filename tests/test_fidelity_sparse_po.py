"""SparsePO (P25) against the authors' code.

Source: github.com/huawei-noah/HEBO, commit ee6112d39d1a9e9703fecaf9057193e1ec9dae72, folder SparsePO/:
  * src/trainers/sparse_trainer.py, SparseTrainer.get_batch_loss_metrics (loss, L1) and SparseTrainer.__init__
    (L1 halving for a shared mask); src/trainers/sparse_config.py (SparseConfig defaults);
  * src/masks/mask_models.py, SimpleMaskAllLayers / SimpleMaskLayer (learned mask head);
    src/masks/pipeline_gpt_neox.py, PipelineWrapNL.forward (the head reads reference_states[1:]);
  * src/trainers/mapo_trainer.py, MAPOTrainer.apply_activation_mapping ('zn_rescale'), concatenated_forward
    (averaging), mapo_loss (reference-activation masks).
The expected values below are written out from those functions in plain Python, not with preftune.
"""
from __future__ import annotations

import json
import math
import shutil
import statistics

import pytest
import torch

from preftune.errors import ConfigError
from preftune.objectives import get
from preftune.objectives.base import PairStats


def _logsig(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def _softmax(v):
    mx = max(v)
    e = [math.exp(a - mx) for a in v]
    return [a / sum(e) for a in e]


# hand-made batch: 2 pairs, T = 3, vocab 3 ----------------------------------------------------------------
CM = [[1, 1, 0], [1, 1, 1]]  # chosen response positions
RM = [[1, 1, 1], [1, 1, 0]]
PC = [[-1.2, -0.7, 0.0], [-2.0, -0.1, -0.9]]  # policy / reference per-token log-probs of the labels
RC = [[-1.0, -0.9, 0.0], [-1.5, -0.3, -1.0]]
PR = [[-0.8, -1.6, -0.4], [-0.2, -0.5, 0.0]]
RR = [[-1.1, -1.2, -0.5], [-0.6, -0.3, 0.0]]
# per-position vocabulary logits (policy, reference) for the token KL, [side][b][t] -> 3 logits
POL_LOGITS = {"c": [[[0.1, 0.5, -0.3], [1.0, 0.0, 0.2], [0.0, 0.0, 0.0]],
                    [[0.3, -0.2, 0.9], [0.0, 0.4, 0.4], [1.2, -1.0, 0.1]]],
              "r": [[[0.2, 0.2, 0.1], [-0.5, 0.3, 0.8], [0.6, 0.1, -0.4]],
                    [[0.9, 0.0, -0.9], [0.4, -0.1, 0.0], [0.0, 0.0, 0.0]]]}
REF_LOGITS = {"c": [[[0.0, 0.4, -0.1], [0.8, 0.3, 0.2], [0.0, 0.0, 0.0]],
                    [[0.1, 0.1, 0.7], [0.2, 0.2, 0.5], [1.0, -0.8, 0.4]]],
              "r": [[[0.5, 0.1, 0.0], [-0.2, 0.1, 0.9], [0.3, 0.3, -0.2]],
                    [[0.7, 0.2, -0.6], [0.1, 0.2, -0.3], [0.0, 0.0, 0.0]]]}


def _authors_token_kl(side):
    """sparse_trainer.py: chosen_token_kl = (reference_chosen_ps * (policy_logps_vocab - reference_logps_vocab)).sum(-1)
    -- the negative KL(ref || pi) per position."""
    out = []
    for pl_row, rl_row in zip(POL_LOGITS[side], REF_LOGITS[side]):
        row = []
        for pl, rl in zip(pl_row, rl_row):
            lp = [math.log(p) for p in _softmax(pl)]
            lr = [math.log(p) for p in _softmax(rl)]
            row.append(sum(math.exp(b) * (a - b) for a, b in zip(lp, lr)))
        out.append(row)
    return out


def _stats(**extras):
    T = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    cm, rm = torch.tensor(CM, dtype=torch.bool), torch.tensor(RM, dtype=torch.bool)
    pc, rc, pr, rr = T(PC) * cm, T(RC) * cm, T(PR) * rm, T(RR) * rm
    kl = {s: -T(_authors_token_kl(s)) * (cm if s == "c" else rm) for s in ("c", "r")}  # preftune: +KL(ref||pi)
    base = {"chosen_token_kl": kl["c"], "rejected_token_kl": kl["r"]}
    base.update(extras)
    return PairStats(pc.sum(-1), pr.sum(-1), rc.sum(-1), rr.sum(-1), policy_chosen_token_logps=pc,
                     policy_rejected_token_logps=pr, reference_chosen_token_logps=rc,
                     reference_rejected_token_logps=rr, chosen_mask=cm, rejected_mask=rm, extras=base)


def _authors_loss(beta, mu_c, mu_r, md_c, md_r, l1u=0.0, l1d=0.0):
    """SparseTrainer.get_batch_loss_metrics, per pair, masks given ([b][t]; None = that term not masked)."""
    kc, kr = _authors_token_kl("c"), _authors_token_kl("r")
    out = []
    for b in range(2):
        ones_c, ones_r = [1.0] * 3, [1.0] * 3
        mc, mr = (mu_c[b] if mu_c else ones_c), (mu_r[b] if mu_r else ones_r)
        chosen_reward = sum(mc[t] * (PC[b][t] - RC[b][t]) * CM[b][t] for t in range(3))
        rejected_reward = sum(mr[t] * (PR[b][t] - RR[b][t]) * RM[b][t] for t in range(3))
        u = chosen_reward - rejected_reward
        dc, dr = (md_c[b] if md_c else ones_c), (md_r[b] if md_r else ones_r)
        chosen_token_kl = sum(dc[t] * kc[b][t] * CM[b][t] for t in range(3))
        rejected_token_kl = sum(dr[t] * kr[b][t] * RM[b][t] for t in range(3))
        d = chosen_token_kl - rejected_token_kl
        loss = -_logsig(beta * (u - d))
        if mu_c:  # mask_on_reward
            loss += l1u * (sum(abs(mc[t] * CM[b][t]) for t in range(3)) + sum(abs(mr[t] * RM[b][t]) for t in range(3)))
        if md_c:  # mask_on_kl
            loss += l1d * (sum(abs(dc[t] * CM[b][t]) for t in range(3)) + sum(abs(dr[t] * RM[b][t]) for t in range(3)))
        out.append(loss)
    return out


def test_defaults_and_names_are_the_authors():
    o = get("sparse_po")
    # SparseConfig: beta 0.1, relu/relu, mask_on_reward/kl True, rw_kl_independent False, l1 0 -- and the KL term
    assert (o.beta, o.mask_layer_activation, o.mask_mixer_activation) == (0.1, "relu", "relu")
    assert (o.mask_on_reward, o.mask_on_kl, o.rw_kl_independent) == (True, True, False)
    assert (o.l1_norm_param_u, o.l1_norm_param_d, o.kl_term) == (0.0, 0.0, "sequential")
    assert "token_kl" in o.needs and "sparse_reference_masks" in o.needs
    assert "reference_layer_states" in get("sparse_po", mask="learned").needs
    assert "label_states" not in get("sparse_po", mask="learned").needs  # not the policy's own states
    with pytest.raises(ConfigError, match="mask_layer_activation"):
        get("sparse_po", mask_layer_activation="sigmoid")
    with pytest.raises(ConfigError, match="learned"):
        get("sparse_po", l1_norm_param_u=0.1)  # mask='reference' has no parameters to penalise


def test_reference_mask_loss_is_the_authors_mapo_loss():
    """mapo_loss: the same mask on u and d; -logsigmoid(beta * ((u_c - u_r) - (d_c - d_r)))."""
    m_c = [[0.3, 1.0, 0.0], [0.0, 0.25, 1.0]]
    m_r = [[1.0, 0.0, 0.6], [0.5, 0.0, 0.0]]
    s = _stats(chosen_reward_mask=torch.tensor(m_c, dtype=torch.float64),
               rejected_reward_mask=torch.tensor(m_r, dtype=torch.float64))
    for beta in (0.1, 0.8):
        got = get("sparse_po", beta=beta)(s).loss
        torch.testing.assert_close(got, torch.tensor(_authors_loss(beta, m_c, m_r, m_c, m_r), dtype=torch.float64),
                                   rtol=1e-6, atol=0)
    # mask_on_kl=False: the KL term is kept, unmasked
    got = get("sparse_po", beta=0.5, mask_on_kl=False)(s).loss
    torch.testing.assert_close(got, torch.tensor(_authors_loss(0.5, m_c, m_r, None, None), dtype=torch.float64),
                               rtol=1e-6, atol=0)


def _hand_head(states, mask, params, eps, layer_act="relu", mixer_act="relu"):
    """SimpleMaskAllLayers.forward written out: LayerNorm, per-layer w.x + b, act, mixer (no bias), act."""
    B, T, L, H = len(states), len(states[0]), len(states[0][0]), len(states[0][0][0])

    def act(vals, row_mask, kind):
        if kind == "relu":
            return [max(v, 0.0) for v in vals]
        if kind == "resc":  # apply_masked_rescaling: min-max over the row's response tokens, times the mask
            sel = [v for v, k in zip(vals, row_mask) if k]
            lo, hi = min(sel), max(sel)
            return [(v - lo) / (hi - lo) * k for v, k in zip(vals, row_mask)]
        return vals

    out = []
    for b in range(B):
        per_layer = []
        for li in range(L):
            w, bias = params["w"][li], params["b"][li]
            row = []
            for t in range(T):
                x = states[b][t][li]
                mu = sum(x) / H
                var = sum((a - mu) ** 2 for a in x) / H
                ln = [(a - mu) / math.sqrt(var + eps) * g + c for a, g, c in zip(x, params["ln_w"], params["ln_b"])]
                row.append(sum(a * c for a, c in zip(ln, w)) + bias)
            per_layer.append(act(row, mask[b], layer_act))
        mixed = [sum(params["mix"][li] * per_layer[li][t] for li in range(L)) for t in range(T)]
        out.append([v * k for v, k in zip(act(mixed, mask[b], mixer_act), mask[b])])
    return out


def _set_head(mod, params):
    with torch.no_grad():
        mod.layer_norm.weight.copy_(torch.tensor(params["ln_w"]))
        mod.layer_norm.bias.copy_(torch.tensor(params["ln_b"]))
        for li, lin in enumerate(mod.w_per_layer):
            lin.weight.copy_(torch.tensor([params["w"][li]]))
            lin.bias.fill_(params["b"][li])
        mod.mixer.weight.copy_(torch.tensor([params["mix"]]))


P1 = {"ln_w": [1.0, 0.5, 2.0, 1.0], "ln_b": [0.0, 0.1, -0.1, 0.2], "w": [[0.5, -0.3, 0.8, 0.1], [-0.2, 0.7, 0.4, -0.6]],
      "b": [0.1, -0.05], "mix": [0.9, 0.6]}
P2 = {"ln_w": [1.0, 1.0, 1.0, 1.0], "ln_b": [0.0, 0.0, 0.0, 0.0], "w": [[-0.4, 0.2, 0.3, 0.9], [0.6, 0.1, -0.5, 0.2]],
      "b": [0.2, 0.0], "mix": [-0.3, 1.1]}


def _bound(obj):
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=4, num_hidden_layers=2, num_attention_heads=1, intermediate_size=8, vocab_size=8)
    obj.bind(type("M", (), {"config": cfg})())
    return obj, cfg.rms_norm_eps


@pytest.mark.parametrize("case", ["shared", "independent", "resc", "reward_only"])
def test_learned_mask_loss_is_the_authors(case):
    """SparseTrainer.get_batch_loss_metrics with masks from SimpleMaskAllLayers over the reference's states of
    every layer, L1 penalties included (halved for a shared mask, as SparseTrainer.__init__)."""
    g = torch.Generator().manual_seed(3)
    states = {s: torch.randn(2, 3, 2, 4, generator=g, dtype=torch.float64) for s in ("c", "r")}
    kw = {"shared": dict(l1_norm_param_u=0.03, l1_norm_param_d=0.05),
          "independent": dict(rw_kl_independent=True, l1_norm_param_u=0.03, l1_norm_param_d=0.05),
          "resc": dict(mask_layer_activation="resc", mask_mixer_activation="relu", l1_norm_param_u=0.02),
          "reward_only": dict(mask_on_kl=False, l1_norm_param_u=0.04, l1_norm_param_d=0.07)}[case]
    obj, eps = _bound(get("sparse_po", mask="learned", beta=0.7, **kw))
    head = obj.sparse_mask_head.double()
    main = head.reward if case == "independent" else head.common
    _set_head(main, P1)
    if case == "independent":
        _set_head(head.kl, P2)
    s = _stats(chosen_reference_layer_states=states["c"], rejected_reference_layer_states=states["r"])
    got = obj(s).loss
    la, ma = ("resc", "relu") if case == "resc" else ("relu", "relu")
    hs = {k: v.tolist() for k, v in states.items()}
    mu_c, mu_r = _hand_head(hs["c"], CM, P1, eps, la, ma), _hand_head(hs["r"], RM, P1, eps, la, ma)
    l1u, l1d = kw.get("l1_norm_param_u", 0.0), kw.get("l1_norm_param_d", 0.0)
    if case == "independent":
        md_c, md_r = _hand_head(hs["c"], CM, P2, eps), _hand_head(hs["r"], RM, P2, eps)
    elif case == "reward_only":
        md_c = md_r = None
    else:
        md_c, md_r = mu_c, mu_r
        l1u, l1d = l1u / 2.0, l1d / 2.0  # common mask: "make up for double adding (from u and d)"
    want = _authors_loss(0.7, mu_c, mu_r, md_c, md_r, l1u, l1d)
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=0)
    # the hand-made case exercises ReLU's exact zeros and masks above 1 (the authors do not clamp)
    if case == "shared":
        flat = [v for row, mrow in zip(mu_c + mu_r, CM + RM) for v, k in zip(row, mrow) if k]
        assert min(flat) == 0.0


def test_mask_head_init_is_hugging_faces_and_keeps_the_run_rng():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    obj, _ = _bound(get("sparse_po", mask="learned"))
    assert torch.equal(torch.random.get_rng_state(), before)
    h = obj.sparse_mask_head.common
    assert torch.equal(h.layer_norm.weight, torch.ones(4)) and torch.equal(h.layer_norm.bias, torch.zeros(4))
    assert all(float(lin.bias.detach()) == 0.0 for lin in h.w_per_layer) and h.mixer.bias is None
    w = torch.cat([lin.weight.flatten() for lin in h.w_per_layer] + [h.mixer.weight.flatten()])
    assert 0 < float(w.detach().abs().max()) < 0.2  # N(0, initializer_range = 0.02)
    again, _ = _bound(get("sparse_po", mask="learned"))
    for a, b in zip(obj.sparse_mask_head.state_dict().values(), again.sparse_mask_head.state_dict().values()):
        assert torch.equal(a, b)


def _zn_rescale_by_hand(values, mask):
    """MAPOTrainer.apply_activation_mapping('zn_rescale') on one row of per-token reduced activations."""
    sel = [v for v, k in zip(values, mask) if k]
    mean = sum(sel) / len(sel)
    std = statistics.stdev(sel) + 1e-12  # torch .std(): Bessel-corrected
    z = [(v - mean) / std for v in values]
    zs = [a for a, k in zip(z, mask) if k]
    lo, hi = min(zs), max(zs)
    return [(a - lo) / (hi - lo) * k for a, k in zip(z, mask)]


def test_activation_mask_is_the_authors_zn_rescale_averaged():
    from preftune.objectives.token_level import activation_mask, zn_rescale

    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    layers = [torch.tensor([[[1.0, 3.0], [0.0, -2.0], [4.0, 4.0], [9.0, 9.0]],
                            [[5.0, 5.0], [1.0, 0.0], [-1.0, 2.0], [0.5, 1.5]]]),
              torch.tensor([[[0.2, 0.0], [0.1, 0.9], [-0.3, 0.3], [7.0, 1.0]],
                            [[0.0, 0.0], [2.0, 2.0], [2.0, 0.0], [3.0, 1.0]]])]
    logits = torch.tensor([[[0.5, 0.1, 0.0], [0.2, 0.2, 0.2], [1.0, -1.0, 3.0], [0.0, 0.0, 0.0]],
                           [[0.0, 0.0, 0.0], [0.3, 0.3, 0.0], [-0.6, 0.0, 0.0], [0.9, 0.9, 0.9]]])
    mk = mask.tolist()

    def reduced(x):  # act_reduced = activation_vec.mean(-1)
        return [[sum(v) / len(v) for v in row] for row in x.tolist()]

    per_layer = [[_zn_rescale_by_hand(r, m) for r, m in zip(reduced(h), mk)] for h in layers]
    for li, h in enumerate(layers):
        torch.testing.assert_close(zn_rescale(h, mask), torch.tensor(per_layer[li]), rtol=1e-6, atol=1e-7)
    resid = [[(a + b) / 2 for a, b in zip(r0, r1)] for r0, r1 in zip(*per_layer)]  # mean over the family
    lg = [_zn_rescale_by_hand(r, m) for r, m in zip(reduced(logits), mk)]
    want = [[(a + b) / 2 for a, b in zip(r, q)] for r, q in zip(resid, lg)]  # mean over the families
    torch.testing.assert_close(activation_mask(layers, mask, logits), torch.tensor(want), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(activation_mask(layers, mask), torch.tensor(resid), rtol=1e-6, atol=1e-7)
    # a sequence whose activations are all equal (the authors get NaN): mask 1 on its response
    flat = zn_rescale(torch.ones(1, 3, 2), torch.tensor([[True, True, False]]))
    assert flat.tolist() == [[1.0, 1.0, 0.0]]


def test_reference_masks_supplier_reads_the_reference_layers_and_logits():
    from preftune.data.collate import collate_pairs
    from preftune.models import build_model
    from preftune.objectives.token_level import activation_mask
    from preftune.reference import FrozenModel
    from preftune.suppliers.sparse_reference_masks import reference_masks

    model = build_model(32, hidden_size=16, num_layers=2, num_heads=2)
    ref = FrozenModel.copy_of(model)
    batch = collate_pairs(_items(), 0)
    with torch.no_grad():
        out = ref.model(batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    hs = [torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], 1) for h in out.hidden_states[1:]]  # padded: t-1 -> t
    lg = torch.cat([torch.zeros_like(out.logits[:, :1]), out.logits[:, :-1]], 1)
    want = activation_mask([h[batch.seq_row] for h in hs], batch.seq_mask, lg[batch.seq_row])
    torch.testing.assert_close(reference_masks(ref, batch, "resid,logits", chunk_size=3), want, rtol=1e-5, atol=1e-6)


def _items(n=4):
    from preftune.data.types import TokenizedPair
    return [TokenizedPair([5, 6, 7, 8][: 2 + i % 3], [9, 10, 11, 12, 13, 2][: 3 + i % 4], [14, 15, 2][: 1 + i % 3],
                          row=i) for i in range(n)]


def test_learned_masks_give_the_policy_no_gradient_through_the_mask_path():
    """The head reads the reference's states (no_grad): the policy's gradient is the one it would get with
    the masks as constants (only through the log-ratios and the token KL); the head gets its own gradient."""
    from preftune.data.collate import collate_pairs
    from preftune.models import build_model
    from preftune.reference import FrozenModel
    from preftune.train import compute_loss

    pol = build_model(32, hidden_size=16, num_layers=2, num_heads=2, seed=0)
    ref = FrozenModel(build_model(32, hidden_size=16, num_layers=2, num_heads=2, seed=1))
    items = _items()
    collate = lambda ex: collate_pairs(ex, 0)  # noqa: E731
    batch = collate(items)
    obj = get("sparse_po", mask="learned", beta=0.5, l1_norm_param_u=0.01)
    obj.bind(pol)
    with torch.no_grad():  # a head with a larger scale, so masks are well away from zero
        for p in obj.sparse_mask_head.parameters():
            if p.dim() == 2:
                p.mul_(40.0)
    loss, _, stats = compute_loss(pol, ref, obj, batch, items=items, collate=collate)
    ls = stats.extras["chosen_reference_layer_states"]
    assert ls.shape[2:] == (2, 16) and not ls.requires_grad
    params = [p for p in pol.parameters() if p.requires_grad]
    masks = {s: obj.sparse_mask_head(stats.extras[f"{s}_reference_layer_states"], getattr(stats, f"{s}_mask"))[0]
             for s in ("chosen", "rejected")}
    assert float(masks["chosen"].detach().max()) > 0.1
    assert all(g is None for g in torch.autograd.grad(masks["chosen"].sum(), params, allow_unused=True,
                                                      retain_graph=True))
    head_params = list(obj.sparse_mask_head.parameters())
    g_pol = torch.autograd.grad(loss, params + head_params, retain_graph=True)
    assert any(float(g.abs().max()) > 0 for g in g_pol[len(params):])  # the head learns
    # the same loss with the masks as constants: the policy's gradient is the same
    const = get("sparse_po", beta=0.5)
    ex = dict(stats.extras)
    for s in ("chosen", "rejected"):
        ex[f"{s}_reward_mask"] = masks[s].detach()
    stats.extras = ex
    g_const = torch.autograd.grad(const(stats).loss.mean(), params, allow_unused=True)
    for a, b in zip(g_pol[:len(params)], g_const):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, rtol=1e-5, atol=1e-7)


def _cfg(tiny_dir, data, out, **kw):
    from preftune.train import TrainConfig
    base = dict(model=str(tiny_dir), data=str(data), output=str(out), batch_size=8, lr=2e-2, max_steps=4,
                save_every=2, progress=False, group_by_length=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("params", [{"mask": "learned", "beta": 0.5, "rw_kl_independent": True,
                                     "l1_norm_param_u": 0.01, "l1_norm_param_d": 0.01},
                                    {"mask": "reference", "beta": 0.5}], ids=["learned", "reference"])
def test_trains_with_the_kl_term_checkpoints_and_resumes_bitwise(tiny_dir, pair_rows, tmp_path, params):
    from preftune.train import train

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pair_rows))
    # the authors' head init makes masks of about 1e-3 on this tiny model; at a large learning rate AdamW's
    # first steps can push the ReLU mask to all zeros, an absorbing state (no gradient through ReLU at 0)
    kw = dict(loss="sparse_po", loss_params=params, lr=3e-3 if params["mask"] == "learned" else 2e-2)
    full = train(_cfg(tiny_dir, data, tmp_path / "a", **kw))
    first = full.history[0]  # policy = reference: u = d = 0, the loss is log 2 plus the masks' L1 penalty
    assert first["loss"] - first.get("sparse/l1_penalty", 0.0) == pytest.approx(math.log(2), abs=1e-5)
    assert all(math.isfinite(h["loss"]) for h in full.history)
    assert full.history[-1]["sparse/masked_kl_chosen"] >= 0 and "sparse/masked_kl_rejected" in full.history[-1]
    extra = tmp_path / "a" / "final" / "extra_modules.safetensors"
    if params["mask"] == "learned":
        from safetensors.torch import load_file
        head = load_file(str(extra))
        assert {"sparse_mask_head.reward.mixer.weight", "sparse_mask_head.kl.mixer.weight"} <= set(head)
    else:
        assert not extra.exists()
    run = tmp_path / "b"
    train(_cfg(tiny_dir, data, run, **kw))
    shutil.rmtree(run / "checkpoints" / "step-4")
    shutil.rmtree(run / "final")
    resumed = train(_cfg(tiny_dir, data, run, resume=True, **kw))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_reference_mask_families_are_read_inside_a_composition():
    from preftune.objectives import build
    from preftune.suppliers.sparse_reference_masks import _activations

    assert _activations(get("sparse_po", activations="logits")) == "logits"
    assert _activations(build("dpo:1,sparse_po:0.5", activations="resid")) == "resid"
