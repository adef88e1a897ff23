"""preftune.models.generate: left-padded batched generation, seeding, EOS handling, train mode;
and the scoring that follows it (generate -> score -> pair)."""
from __future__ import annotations

import random

import pytest
import torch

from preftune.data.collate import collate_pairs
from preftune.data.types import TokenizedPair
from preftune.models import build_model, label_states, pair_logps, response_logps, sequence_logps
from preftune.models.generate import Generation, generate, left_pad

V, PAD, EOS = 64, 0, 2


def tiny(seed: int = 0, eos_boost: float = 0.0):
    """A random tiny Llama; ``eos_boost`` > 0 makes EOS likely at some positions and not others."""
    m = build_model(V, hidden_size=32, num_layers=2, num_heads=4, seed=seed, pad_token_id=PAD, eos_token_id=EOS)
    if eos_boost:
        with torch.no_grad():
            m.lm_head.weight[EOS] = eos_boost * m.model.norm.weight.sign()
    return m.eval()


class ConstantHead(torch.nn.Module):
    """An LM head that always puts all its mass on ``token``."""

    def __init__(self, token: int):
        super().__init__()
        self.token = token

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = torch.full((*h.shape[:-1], V), -1e4, dtype=h.dtype, device=h.device)
        out[..., self.token] = 0.0
        return out


def prompts(n: int = 7, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, V) for _ in range(rng.randint(1, 7))] for _ in range(n)]


def alone_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy decoding of one unpadded prompt, cut after the first EOS."""
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens, eos_token_id=EOS, pad_token_id=PAD)[0, len(prompt):].tolist()
    return out[:out.index(EOS) + 1] if EOS in out else out


def test_left_pad_right_aligns_prompts():
    ids, attn = left_pad([[5, 6, 7], [8]], pad_id=9)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]]
    assert attn.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("bucket", [False, True])
def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(bucket):
    model = tiny(seed=2, eos_boost=0.1)
    ps = prompts(9, seed=3)
    gens = generate(model, None, ps, max_new_tokens=8, do_sample=False, batch_size=4, eos_id=EOS, pad_id=PAD,
                    bucket_by_length=bucket)
    assert [(g.index, g.sample) for g in gens] == [(i, 0) for i in range(len(ps))]
    expected = [alone_greedy(model, p, 8) for p in ps]
    assert [g.response_ids for g in gens] == expected
    assert [g.prompt_ids for g in gens] == ps
    # the check means something: some responses stop at EOS, some use the whole budget, lengths differ
    assert {g.finished for g in gens} == {True, False}
    assert len({len(g.response_ids) for g in gens}) > 1


def test_same_seed_same_samples_and_caller_rng_untouched():
    model = tiny(seed=2, eos_boost=2.0)
    ps = prompts(5, seed=4)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate(model, None, ps, n=3, max_new_tokens=6, seed=7, batch_size=4, eos_id=EOS, pad_id=PAD)
    assert torch.equal(torch.get_rng_state(), state)
    b = generate(model, None, ps, n=3, max_new_tokens=6, seed=7, batch_size=4, eos_id=EOS, pad_id=PAD)
    c = generate(model, None, ps, n=3, max_new_tokens=6, seed=8, batch_size=4, eos_id=EOS, pad_id=PAD)
    assert a == b
    assert [g.response_ids for g in a] != [g.response_ids for g in c]
    assert [(g.index, g.sample) for g in a] == [(i, j) for i in range(5) for j in range(3)]


def _unshared(monkeypatch):
    import preftune.models.generate as G

    monkeypatch.setattr(G, "_can_share_prefix", lambda model: False)


@pytest.mark.parametrize("bucket,batch_size", [(False, 4), (False, 6), (True, 5), (False, 64)])
def test_shared_prompt_cache_gives_the_samples_of_encoding_each_prompt(monkeypatch, bucket, batch_size):
    """n > 1: the prompts are encoded once and their cache repeated; greedy and seeded sampled outputs equal those of
    encoding every sample's prompt (prompts of 1 to 7 tokens, left-padded, batches that split a prompt's samples)."""
    import preftune.models.generate as G

    model = tiny(seed=2, eos_boost=0.1)
    ps = prompts(9, seed=3)
    assert min(map(len, ps)) == 1 and max(map(len, ps)) > 4
    calls = []
    real = G._shared_prefix_cache
    monkeypatch.setattr(G, "_shared_prefix_cache", lambda *a: calls.append(1) or real(*a))
    kw = dict(n=3, max_new_tokens=8, batch_size=batch_size, eos_id=EOS, pad_id=PAD, bucket_by_length=bucket)
    shared = [generate(model, None, ps, do_sample=False, **kw), generate(model, None, ps, seed=5, **kw)]
    assert calls  # the shared path ran
    _unshared(monkeypatch)
    plain = [generate(model, None, ps, do_sample=False, **kw), generate(model, None, ps, seed=5, **kw)]
    assert shared == plain
    assert len({tuple(g.response_ids) for g in shared[1]}) > len(ps)  # sampling drew different answers


def test_shared_prompt_cache_encodes_each_distinct_prompt_once(monkeypatch):
    import preftune.models.generate as G

    model = tiny(seed=1)
    seen = []
    real = G._shared_prefix_cache

    def spy(m, ids, attn, rows):
        seen.append((ids.shape[0], len(set(rows))))
        return real(m, ids, attn, rows)

    monkeypatch.setattr(G, "_shared_prefix_cache", spy)
    generate(model, None, prompts(4, seed=1), n=4, max_new_tokens=3, batch_size=16, eos_id=EOS, pad_id=PAD)
    assert seen == [(16, 4)]
    assert G._can_share_prefix(model)


def test_eos_ends_a_response_and_is_kept():
    model = tiny()
    model.lm_head = ConstantHead(EOS)
    gens = generate(model, None, prompts(4), n=2, max_new_tokens=5, eos_id=EOS, pad_id=PAD)
    assert all(g.response_ids == [EOS] and g.finished for g in gens)


def test_budget_respected_without_eos():
    model = tiny()
    model.lm_head = ConstantHead(7)
    gens = generate(model, None, prompts(4), max_new_tokens=5, eos_id=EOS, pad_id=PAD)
    assert all(g.response_ids == [7] * 5 and not g.finished for g in gens)
    # any of several EOS ids ends a response
    gens = generate(model, None, prompts(2), max_new_tokens=5, eos_id=[EOS, 7], pad_id=PAD)
    assert all(g.response_ids == [7] and g.finished for g in gens)


def test_sampled_responses_stop_at_first_eos_and_hold_no_padding():
    model = tiny(seed=1, eos_boost=2.0)
    gens = generate(model, None, prompts(8, seed=5), n=4, max_new_tokens=6, seed=0, batch_size=8, eos_id=EOS,
                    pad_id=PAD)
    for g in gens:
        assert 1 <= len(g.response_ids) <= 6
        assert EOS not in g.response_ids[:-1]
        assert g.finished == (g.response_ids[-1] == EOS)
        if not g.finished:
            assert len(g.response_ids) == 6
    assert {g.finished for g in gens} == {True, False}


def test_tokenizer_and_model_config_supply_ids():
    model = tiny()
    model.lm_head = ConstantHead(EOS)

    class Tok:
        eos_token_id, pad_token_id = 7, PAD

    assert generate(model, None, [[5]], max_new_tokens=3)[0] == Generation(0, 0, [5], [EOS], True)  # config's EOS
    model.lm_head = ConstantHead(7)
    assert generate(model, Tok(), [[5]], max_new_tokens=3)[0].response_ids == [7]                 # tokenizer's EOS


@pytest.mark.parametrize("training", [True, False])
def test_generates_in_eval_mode_and_restores_the_mode(training):
    model = tiny()
    model.train(training)
    seen = []
    model.model.register_forward_hook(lambda mod, args, out: seen.append(mod.training))
    generate(model, None, prompts(3), max_new_tokens=3, eos_id=EOS, pad_id=PAD)
    assert seen and not any(seen)
    assert all(m.training == training for m in model.modules())


def test_rejects_bad_arguments():
    model = tiny()
    with pytest.raises(ValueError, match="empty"):
        generate(model, None, [[5], []], max_new_tokens=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, None, [[5]], max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, None, [[5]], max_new_tokens=3, temperature=0.0)


# ----------------------------------------------------------------------------- scoring


def test_generate_then_score_then_pair():
    model = tiny(seed=1, eos_boost=2.0)
    model.train()
    ps = prompts(4, seed=6)
    gens = generate(model, None, ps, n=2, max_new_tokens=5, seed=1, eos_id=EOS, pad_id=PAD)
    items = [(g.prompt_ids, g.response_ids) for g in gens]
    lp = response_logps(model, items, pad_id=PAD, batch_size=3)
    assert model.training
    # each response scored alone, in a batch of one
    alone = torch.cat([response_logps(model, [it], pad_id=PAD) for it in items])
    torch.testing.assert_close(lp, alone, rtol=0, atol=1e-5)
    # pairs of a prompt's two samples: the same numbers as the padded pair batch
    pairs = [TokenizedPair(gens[2 * i].prompt_ids, gens[2 * i].response_ids, gens[2 * i + 1].response_ids, row=i)
             for i in range(len(ps))]
    pl = pair_logps(model, pairs, PAD, batch_size=3)
    assert model.training
    torch.testing.assert_close(pl.chosen, lp[0::2], rtol=0, atol=1e-5)
    torch.testing.assert_close(pl.rejected, lp[1::2], rtol=0, atol=1e-5)
    assert pl.chosen_lengths.tolist() == [len(g.response_ids) for g in gens[0::2]]
    with torch.no_grad():
        model.eval()
        ref = sequence_logps(model, collate_pairs(pairs, PAD))
    torch.testing.assert_close(torch.cat([pl.chosen, pl.rejected]), ref.sums, rtol=0, atol=1e-5)


def test_scoring_a_reference_free_source_gives_none():
    class NoRef:
        def logps(self, batch, *, per_token=False):
            return None

    pairs = [TokenizedPair([5, 6], [7, EOS], [8, EOS])]
    assert pair_logps(NoRef(), pairs, PAD) is None
    assert response_logps(NoRef(), [([5], [7])], pad_id=PAD) is None


def test_label_states_are_the_states_the_log_probs_use():
    model = tiny()
    batch = collate_pairs([TokenizedPair([5, 6, 9], [7, 8, EOS], [8, EOS]), TokenizedPair([4], [3, EOS], [9])], PAD)
    with torch.no_grad():
        kept = sequence_logps(model, batch, keep_states=True).label_states
        torch.testing.assert_close(label_states(model, batch), kept, rtol=0, atol=0)


def test_models_naming_a_cache_implementation_encode_each_sample_prompt():
    """transformers refuses a cache handed to generate when the checkpoint names a cache implementation (Gemma's
    'hybrid', 'static'): such models skip the shared prompt cache and still sample."""
    import preftune.models.generate as G

    model = tiny(seed=1)
    model.generation_config.cache_implementation = "static"
    assert not G._can_share_prefix(model)
    gens = generate(model, None, prompts(3, seed=2), n=2, max_new_tokens=3, batch_size=6, eos_id=EOS, pad_id=PAD)
    assert len(gens) == 6


def test_sharded_parameters_generate_without_inference_mode():
    """FSDP2 (DTensor) and ZeRO-3 (ds_id) parameters gathered under inference mode could not be trained after."""
    import preftune.models.generate as G

    model = tiny(seed=1)
    assert G._inference_mode_ok(model)
    next(model.parameters()).ds_id = 0
    assert not G._inference_mode_ok(model)
