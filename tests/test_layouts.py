"""Every layout gives the same per-sequence log-probs (and gradients) as the padded one."""
from __future__ import annotations

import random

import pytest
import torch

from preftune.data.collate import collate_pairs
from preftune.data.packed import collate_pairs_packed, collate_unpaired_packed, pack_rows
from preftune.data.collate import collate_unpaired
from preftune.data.prefix_shared import collate_pairs_prefix_shared
from preftune.data.types import TokenizedPair, TokenizedUnpaired
from preftune.models.logprobs import sequence_logps
from preftune.models.tiny import build_model

V = 97


def _ids(rng, lo, hi):
    return [rng.randrange(3, V) for _ in range(rng.randint(lo, hi))]


def _pairs(n=5, seed=0, min_prompt=0):
    rng = random.Random(seed)
    return [TokenizedPair(_ids(rng, min_prompt, 9), _ids(rng, 1, 7), _ids(rng, 1, 7), row=i,
                          extras={"weight": float(i + 1)}) for i in range(n)]


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    m = build_model(V, hidden_size=32, num_layers=2, num_heads=4, seed=1)
    m.config._attn_implementation = request.param
    return m


def _logps_and_grads(model, batch):
    model.zero_grad()
    lp = sequence_logps(model, batch, chunk_size=4)
    w = torch.arange(1, lp.sums.shape[0] + 1, dtype=torch.float32)
    (lp.sums * w).sum().backward()
    return lp, torch.cat([p.grad.flatten() for p in model.parameters()])


LAYOUTS = {
    "prefix_shared": collate_pairs_prefix_shared,
    "packed": collate_pairs_packed,
    "packed_one_row": lambda ex, pad: collate_pairs_packed(ex, pad, max_row_tokens=10_000),
    "packed_unshared": lambda ex, pad: collate_pairs_packed(ex, pad, share_prompt=False),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_matches_padded(model, layout):
    ex = _pairs()
    ref, gref = _logps_and_grads(model, collate_pairs(ex, 0))
    batch = LAYOUTS[layout](ex, 0)
    got, g = _logps_and_grads(model, batch)
    torch.testing.assert_close(got.sums, ref.sums, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.lengths, ref.lengths)
    torch.testing.assert_close(g, gref, rtol=1e-5, atol=1e-4)
    assert batch.num_examples == len(ex) and batch.rows == [e.row for e in ex]
    torch.testing.assert_close(batch.extras["weight"], torch.arange(1.0, 6.0))


def test_prefix_shared_structure():
    ex = [TokenizedPair([5, 6, 7], [8, 9], [10, 11, 12])]
    b = collate_pairs_prefix_shared(ex, 0)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 12]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5]]
    assert b.seq_row.tolist() == [0, 0]
    assert b.seq_mask.int().tolist() == [[0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1]]
    m = b.attention_mask[0, 0]
    assert m.shape == (8, 8) and m.dtype == torch.bool
    assert m[4].tolist() == [True] * 5 + [False] * 3           # chosen: prompt + itself
    assert m[6].tolist() == [True] * 3 + [False, False, True, True, False]  # rejected: prompt + itself
    assert not m.triu(1).any()


def test_padding_never_fully_masked():
    b = collate_pairs_prefix_shared(_pairs(4, seed=3), 0)
    assert b.attention_mask.any(-1).all()


def test_packed_has_no_inner_padding():
    ex = _pairs(8, seed=2)
    b = collate_pairs_packed(ex, 0, max_row_tokens=10_000)
    assert b.input_ids.shape[0] == 1
    assert b.input_ids.shape[1] == sum(len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in ex)


def test_pack_rows_first_fit():
    rows = pack_rows([5, 3, 4, 2, 1], 6)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    assert all(sum([5, 3, 4, 2, 1][i] for i in r) <= 6 for r in rows)
    assert len(rows) == 3


def test_unpaired_packed_matches_padded(model):
    rng = random.Random(5)
    ex = [TokenizedUnpaired(_ids(rng, 1, 9), _ids(rng, 1, 7), bool(i % 2), row=i) for i in range(5)]
    ref, gref = _logps_and_grads(model, collate_unpaired(ex, 0))
    b = collate_unpaired_packed(ex, 0)
    got, g = _logps_and_grads(model, b)
    torch.testing.assert_close(got.sums, ref.sums, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, gref, rtol=1e-5, atol=1e-4)
    assert b.kind == "unpaired" and b.extras["label"].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]


def test_unsupported_attention_is_refused():
    m = build_model(V, hidden_size=32, num_layers=1, num_heads=4)
    m.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="sdpa"):
        sequence_logps(m, collate_pairs_prefix_shared(_pairs(2), 0))


def _per_sequence(values, batch):
    """Each sequence's values at its response positions, in order (layout-independent)."""
    return [values[s][batch.seq_mask[s]] for s in range(batch.seq_mask.shape[0])]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_token_level_needs_match_padded(model, layout):
    """WPO's log-sum-sq-probs and SparsePO's reference-activation masks read each label's context off the
    mask, so block layouts (where the first rejected token is predicted from the prompt's end, not from
    the token before it in the row) give the padded layout's values."""
    from preftune.objectives.token_level import activation_mask
    from preftune.reference import FrozenModel
    from preftune.suppliers.log_sum_sq_probs import log_sum_sq_probs

    ex = _pairs(min_prompt=1)
    padded, other = collate_pairs(ex, 0), LAYOUTS[layout](ex, 0)
    ref = FrozenModel.copy_of(model)  # a copy: the module's model must keep its gradients
    for fn in (lambda b: log_sum_sq_probs(model, b, chunk_size=5),
               lambda b: activation_mask([h[b.seq_row] for h in ref.hidden_states(b)], b.seq_mask)):
        want, got = _per_sequence(fn(padded), padded), _per_sequence(fn(other), other)
        for w, g in zip(want, got):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def _lists(n=4, seed=3):
    """Ranked lists of 1-4 completions (ragged: the batch pads them with empty entries), some with reasoning steps."""
    from preftune.data.types import TokenizedRanked

    rng = random.Random(seed)
    out = []
    for i in range(n):
        comps = [_ids(rng, 1, 6) for _ in range(rng.randint(1, 4))]
        steps = [[t * 2 // max(1, len(c)) for t in range(len(c))] for c in comps]
        out.append(TokenizedRanked(_ids(rng, 1, 8), comps, [float(k) for k in range(len(comps))], row=10 + i,
                                   extras={"weight": 0.5 * (i + 1)}, step_ids=steps))
    return out


RANKED = {"prefix_shared": "collate_ranked_prefix_shared", "packed": "collate_ranked_packed"}


@pytest.mark.parametrize("layout", sorted(RANKED))
def test_ranked_block_layouts_match_padded(model, layout):
    """A list's K completions after one prompt (packed: several lists a row) give the padded layout's per-sequence
    log-probs, gradients, scores, validity, weights and reasoning-step ids; the prompt is computed once, not K times."""
    import preftune.data.packed as packed
    import preftune.data.prefix_shared as ps
    from preftune.data.collate import collate_ranked

    ex = _lists()
    padded = collate_ranked(ex, 0)
    fn = getattr(ps if layout == "prefix_shared" else packed, RANKED[layout])
    batch = fn(ex, 0) if layout == "prefix_shared" else fn(ex, 0, max_row_tokens=40)
    ref, gref = _logps_and_grads(model, padded)
    got, g = _logps_and_grads(model, batch)
    torch.testing.assert_close(got.sums, ref.sums, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.lengths, ref.lengths)
    torch.testing.assert_close(g, gref, rtol=1e-5, atol=1e-4)
    assert batch.kind == "list" and batch.list_size == padded.list_size == 4 and batch.rows == [10, 11, 12, 13]
    for key in ("scores", "valid", "weight"):
        assert torch.equal(batch.extras[key], padded.extras[key])
    assert not batch.extras["valid"].all()  # ragged lists: some entries are padding
    assert ([x.tolist() for x in _per_sequence(batch.extras["step_ids"], batch)]
            == [x.tolist() for x in _per_sequence(padded.extras["step_ids"], padded)])
    assert (batch.extras["step_ids"][~batch.seq_mask] == -1).all()
    prompt_tokens = sum(len(e.prompt_ids) for e in ex)
    assert int((batch.input_ids != 0).sum()) == prompt_tokens + sum(len(c) for e in ex for c in e.completion_ids)
    if layout == "packed":
        assert batch.input_ids.shape[0] < len(ex)  # lists share rows


def test_list_kind_layouts():
    from preftune.kinds import get_kind

    k = get_kind("list")
    assert sorted(k.collators) == ["packed", "padded", "prefix_shared"]
    assert k.collator("auto", 0).layout == "packed"
    assert k.collator("auto", 0, device="cuda").layout == "prefix_shared"


def test_auto_layout_keeps_long_lists_padded():
    """Under layout auto, a batch whose lists would make one very long row (K long completions after one prompt)
    is collated padded; short ones get the block layout; an explicit layout is taken as asked."""
    from preftune.data.types import TokenizedRanked
    from preftune.kinds import get_kind

    k = get_kind("list")
    short = [TokenizedRanked([5] * 44, [[6] * 32] * 4, [0.0] * 4)]
    long = [TokenizedRanked([5] * 64, [[6] * 128] * 16, [0.0] * 16)]
    auto = k.collator("auto", 0)
    assert auto(short).attention_mask.dim() == 4 and auto(long).attention_mask.dim() == 2
    assert k.collator("packed", 0)(long).attention_mask.dim() == 4


def test_relayout_moves_generation_time_values_between_layouts(model):
    """An online checkpoint made before lists had block layouts holds the sampler's per-token log-probs padded:
    on resume they are moved to the current layout's positions, equal to computing them there."""
    from preftune.data.collate import collate_ranked
    from preftune.data.packed import collate_ranked_packed
    from preftune.online.rollout import Entry, _relayout

    ex = _lists()
    for e in ex:
        e.step_ids = None
    padded, packed = collate_ranked(ex, 0), collate_ranked_packed(ex, 0)
    with torch.no_grad():
        want = sequence_logps(model, packed, per_token=True).token_logps
        old = sequence_logps(model, padded, per_token=True).token_logps
    entry = Entry(ex, {}, [], [], old, 1, {"old_values": old.clone()})
    _relayout(entry, padded, packed)
    torch.testing.assert_close(entry.old_token_logps, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entry.old_extras["old_values"], entry.old_token_logps, rtol=0, atol=0)
