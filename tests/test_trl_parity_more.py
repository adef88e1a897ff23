"""First-step loss parity with TRL's CPO (sigmoid, simpo), ORPO and KTO trainers (1e-4 relative).

TRL version: 1.16.0 (``trl.experimental.cpo.CPOTrainer``, ``trl.experimental.orpo.ORPOTrainer``,
``trl.KTOTrainer``). As in ``test_trl_parity.py``: one tiny model and four pairs; TRL tokenizes (its prepared
dataset gives the ids), TRL's ``compute_loss`` gives its loss, and preftune computes its own from the *same
ids* with ``collate_pairs``/``collate_unpaired`` + ``sequence_logps`` + ``batch_stats`` + the objective.

Token-id convention: TRL's CPO and ORPO trainers prepend the tokenizer's BOS to the prompt and append EOS to
each completion (``add_bos_token_if_needed`` / ``add_eos_token_if_needed``) whatever the tokenizer does; its
DPO and KTO trainers tokenize the prompt as the tokenizer does (the tiny tokenizer adds no BOS) and append EOS.
preftune's own tokenization follows the tokenizer, so here it is given TRL's ids pre-tokenized (prompt with
the BOS, completion with the EOS): the comparison is of the losses on identical ids, not of tokenization.
"""
import copy

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from preftune.data.collate import collate_pairs, collate_unpaired  # noqa: E402
from preftune.data.types import TokenizedPair, TokenizedUnpaired  # noqa: E402
from preftune.kinds import batch_stats  # noqa: E402
from preftune.models.logprobs import sequence_logps  # noqa: E402
from preftune.models.tiny import build_model, build_tokenizer  # noqa: E402
from preftune.objectives import get  # noqa: E402

pytestmark = pytest.mark.bench

PAIRS = [
    ("The capital of France is", " Paris, a large city.", " Berlin."),
    ("Two plus two equals", " four.", " five, or maybe six or seven."),
    ("Water boils at", " one hundred degrees Celsius at sea level.", " zero degrees."),
    ("The sky is", " blue.", " green with purple dots on a sunny day."),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("parity_more")
    texts = [p + c for p, c, r in PAIRS] + [p + r for p, c, r in PAIRS]
    tok = build_tokenizer(texts * 5, vocab_size=300)
    kw = dict(hidden_size=32, num_layers=2, num_heads=2, pad_token_id=tok.pad_token_id,
              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    build_model(len(tok), **kw).save_pretrained(tmp / "m")
    build_model(len(tok), seed=1, **kw).save_pretrained(tmp / "r")  # a reference that differs (KTO)
    tok.save_pretrained(tmp / "m")
    from transformers import AutoModelForCausalLM

    def load(d="m"):
        return AutoModelForCausalLM.from_pretrained(tmp / d, dtype=torch.float32).eval()

    return tmp, tok, load


def _pair_ds():
    return datasets.Dataset.from_dict({"prompt": [p for p, _, _ in PAIRS], "chosen": [c for _, c, _ in PAIRS],
                                       "rejected": [r for _, _, r in PAIRS]})


def _split(ids, labels):
    """(prompt ids, completion ids) of a TRL CPO/ORPO row: the prompt is the leading -100 labels."""
    n = next(i for i, lab in enumerate(labels) if lab != -100)
    return list(ids[:n]), list(ids[n:])


def _pairs_from_rows(rows):
    pairs = []
    for r in rows:
        p, c = _split(r["chosen_input_ids"], r["chosen_labels"])
        p2, rj = _split(r["rejected_input_ids"], r["rejected_labels"])
        assert p == p2
        pairs.append(TokenizedPair(p, c, rj))
    return pairs


def _trl_loss(trainer, rows):
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, copy.copy(batch)).item()


@pytest.fixture(scope="module")
def cpo(tiny):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tmp, tok, load = tiny
    args = CPOConfig(output_dir=str(tmp / "cpo"), report_to=[], per_device_train_batch_size=len(PAIRS),
                     use_cpu=True, bf16=False, fp16=False, save_strategy="no", max_length=256)
    trainer = CPOTrainer(load(), args=args, train_dataset=_pair_ds(), processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    pairs = _pairs_from_rows(rows)
    assert all(p.prompt_ids[0] == tok.bos_token_id for p in pairs)  # TRL's CPO prepends BOS
    assert all(p.chosen_ids[-1] == tok.eos_token_id for p in pairs)
    batch = collate_pairs(pairs, tok.pad_token_id)
    with torch.no_grad():
        stats = batch_stats(batch, sequence_logps(load(), batch))
    return trainer, rows, stats


CPO_CASES = [
    # (TRL trainer attributes, preftune objective, hyperparameters)
    ({"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0}, "cpo",
     {"beta": 0.1, "alpha": 1.0, "nll_average": "batch_tokens"}),
    ({"loss_type": "sigmoid", "beta": 0.3, "cpo_alpha": 0.5}, "cpo",
     {"beta": 0.3, "alpha": 0.5, "nll_average": "batch_tokens"}),
    ({"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 0.0}, "cpo", {"beta": 0.1, "alpha": 0.0}),
    ({"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 1.0, "cpo_alpha": 0.0}, "simpo", {"beta": 2.0, "gamma": 1.0}),
    ({"loss_type": "simpo", "beta": 2.5, "simpo_gamma": 0.5, "cpo_alpha": 0.0}, "simpo", {"beta": 2.5, "gamma": 0.5}),
]


@pytest.mark.parametrize("trl_attrs,name,hp", CPO_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CPO_CASES)])
def test_cpo_trainer_parity(cpo, trl_attrs, name, hp):
    trainer, rows, stats = cpo
    saved = {k: getattr(trainer, k, None) for k in trl_attrs}  # simpo_gamma exists only for loss_type simpo
    try:
        for k, v in trl_attrs.items():
            setattr(trainer, k, v)
        want = _trl_loss(trainer, rows)
    finally:
        for k, v in saved.items():
            setattr(trainer, k, v)
    got = get(name, **hp)(stats).loss.mean().item()
    assert got == pytest.approx(want, rel=1e-4, abs=1e-7), (name, got, want)


def test_cpo_default_sequence_nll_differs_from_trl(cpo):
    """preftune's default CPO NLL (per-response mean) is not TRL's batch-token mean when lengths differ."""
    trainer, rows, stats = cpo
    a = get("cpo", beta=0.1, alpha=1.0)(stats).loss.mean().item()
    b = get("cpo", beta=0.1, alpha=1.0, nll_average="batch_tokens")(stats).loss.mean().item()
    assert abs(a - b) > 1e-4


@pytest.fixture(scope="module")
def orpo(tiny):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    tmp, tok, load = tiny
    args = ORPOConfig(output_dir=str(tmp / "orpo"), report_to=[], per_device_train_batch_size=len(PAIRS),
                      use_cpu=True, bf16=False, fp16=False, save_strategy="no", max_length=256)
    trainer = ORPOTrainer(load(), args=args, train_dataset=_pair_ds(), processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    pairs = _pairs_from_rows(rows)
    assert all(p.prompt_ids[0] == tok.bos_token_id for p in pairs)  # TRL's ORPO prepends BOS
    policy = load()
    batch = collate_pairs(pairs, tok.pad_token_id)
    with torch.no_grad():
        stats = batch_stats(batch, sequence_logps(policy, batch))
        # TRL's ORPO NLL also scores the prompt tokens after the first: the same ids with a one-token "prompt"
        whole = [TokenizedPair(p.prompt_ids[:1], p.prompt_ids[1:] + p.chosen_ids, p.prompt_ids[1:] + p.rejected_ids)
                 for p in pairs]
        wb = collate_pairs(whole, tok.pad_token_id)
        ws = batch_stats(wb, sequence_logps(policy, wb))
    stats.extras["chosen_prompt_logps"] = ws.policy_chosen_logps - stats.policy_chosen_logps
    stats.extras["chosen_prompt_lengths"] = torch.tensor([len(p.prompt_ids) - 1 for p in pairs])
    return trainer, rows, stats


@pytest.mark.parametrize("lam", [0.1, 0.5])
def test_orpo_trainer_parity(orpo, lam):
    trainer, rows, stats = orpo
    saved = trainer.beta
    try:
        trainer.beta = lam
        want = _trl_loss(trainer, rows)
    finally:
        trainer.beta = saved
    got = get("orpo", lam=lam, nll_tokens="prompt_and_completion")(stats).loss.mean().item()
    assert got == pytest.approx(want, rel=1e-4, abs=1e-7), (got, want)


def test_orpo_completion_only_nll_differs_from_trl(orpo):
    """Without the prompt tokens (the default until the trainer supplies them) the NLL is not TRL's."""
    trainer, rows, stats = orpo
    want = _trl_loss(trainer, rows)
    got = get("orpo", lam=trainer.beta)(stats).loss.mean().item()
    assert abs(got - want) > 1e-4


def test_orpo_trainer_parity_with_the_prompt_logps_supplier(orpo, tiny):
    """The same parity, with the prompt log-probs from preftune's ``prompt_logps`` supplier (what `preftune
    train` runs for ``nll_tokens='prompt_and_completion'``), with gradient, instead of the hand-made extras."""
    from preftune.suppliers import MicroBatch, suppliers_for

    trainer, rows, _ = orpo
    tmp, tok, load = tiny
    pairs, policy = _pairs_from_rows(rows), load()
    obj = get("orpo", lam=trainer.beta, nll_tokens="prompt_and_completion")
    sups = suppliers_for(obj)
    assert [type(x).__name__ for x in sups] == ["PromptLogps"]
    batch = collate_pairs(pairs, tok.pad_token_id)
    collate = lambda items: collate_pairs(items, tok.pad_token_id)  # noqa: E731
    collate.pad_id = tok.pad_token_id
    stats = batch_stats(batch, sequence_logps(policy, batch))
    step = MicroBatch(policy, None, obj, batch, pairs, collate)
    for sup in sups:
        sup.supply(stats, step)
    assert stats.extras["chosen_prompt_lengths"].tolist() == [len(p.prompt_ids) - 1 for p in pairs]
    loss = obj(stats).loss.mean()
    assert loss.item() == pytest.approx(_trl_loss(trainer, rows), rel=1e-4, abs=1e-7)
    assert stats.extras["chosen_prompt_logps"].requires_grad  # the prompt tokens' NLL trains, as TRL's does


@pytest.fixture(scope="module")
def kto(tiny):
    from trl import KTOConfig, KTOTrainer

    tmp, tok, load = tiny
    ds = datasets.Dataset.from_dict({"prompt": [p for p, _, _ in PAIRS] * 2,
                                     "completion": [c for _, c, _ in PAIRS] + [r for _, _, r in PAIRS],
                                     "label": [True] * len(PAIRS) + [False] * len(PAIRS)})
    args = KTOConfig(output_dir=str(tmp / "kto"), report_to=[], per_device_train_batch_size=2 * len(PAIRS),
                     use_cpu=True, bf16=False, fp16=False, save_strategy="no")
    # policy "r", reference "m": on this batch the mismatched-pair KL estimate is then positive, so the
    # reference point z0 = max(0, KL) is active (with the roles swapped it clamps to 0)
    trainer = KTOTrainer(load("r"), ref_model=load(), args=args, train_dataset=ds, processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(ds))]
    tb = trainer.data_collator(rows)

    def items(ids, attn, comp, labels):
        out = []
        for i in range(ids.shape[0]):
            keep = attn[i].bool()
            c = comp[i].bool()
            out.append(TokenizedUnpaired(ids[i][keep & ~c].tolist(), ids[i][keep & c].tolist(), bool(labels[i])))
        return out

    main = items(tb["input_ids"], tb["attention_mask"], tb["completion_mask"], tb["label"])
    kl = items(tb["KL_input_ids"], tb["KL_attention_mask"], tb["KL_completion_mask"], tb["label"])
    policy, ref = load("r"), load()
    mb, kb = collate_unpaired(main, tok.pad_token_id), collate_unpaired(kl, tok.pad_token_id)
    with torch.no_grad():
        stats = batch_stats(mb, sequence_logps(policy, mb), sequence_logps(ref, mb))
        stats.kl_policy_logps = sequence_logps(policy, kb).sums
        stats.kl_reference_logps = sequence_logps(ref, kb).sums
    return trainer, tb, stats


@pytest.mark.parametrize("beta,dw,uw", [(0.1, 1.0, 1.0), (0.5, 1.0, 1.5)])
def test_kto_trainer_parity(kto, beta, dw, uw):
    trainer, tb, stats = kto
    saved = (trainer.beta, trainer.desirable_weight, trainer.undesirable_weight)
    try:
        trainer.beta, trainer.desirable_weight, trainer.undesirable_weight = beta, dw, uw
        with torch.no_grad():
            want = trainer.compute_loss(trainer.model, copy.copy(tb)).item()
    finally:
        trainer.beta, trainer.desirable_weight, trainer.undesirable_weight = saved
    assert (stats.kl_policy_logps - stats.kl_reference_logps).mean() > 0  # the KL reference point is active
    got = get("kto", beta=beta, desirable_weight=dw, undesirable_weight=uw)(stats).loss.mean().item()
    assert got == pytest.approx(want, rel=1e-4, abs=1e-7), (got, want)


@pytest.fixture(scope="module")
def dpo(tiny):
    from trl import DPOConfig, DPOTrainer

    tmp, tok, load = tiny
    args = DPOConfig(output_dir=str(tmp / "dpo"), report_to=[], per_device_train_batch_size=len(PAIRS),
                     use_cpu=True, bf16=False, fp16=False, dataset_num_proc=None, save_strategy="no")
    trainer = DPOTrainer(load(), ref_model=load("r"), args=args, train_dataset=_pair_ds(), processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    pairs = [TokenizedPair(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in rows]
    assert any(len(p.chosen_ids) != len(p.rejected_ids) for p in pairs)  # so that score constants matter
    batch = collate_pairs(pairs, tok.pad_token_id)
    with torch.no_grad():
        stats = batch_stats(batch, sequence_logps(load(), batch), sequence_logps(load("r"), batch))
    return trainer, trainer.data_collator(rows), stats


# Issue 13: the f-divergence scores keep their constants (TRL 1.16, restored in huggingface/trl#6559), which
# matters for the length-normalized losses ipo and sigmoid_norm (ln_dpo).
F_CASES = [(lt, name, div) for lt, name in (("ipo", "ipo"), ("sigmoid_norm", "ln_dpo"), ("hinge", "hinge"))
           for div in ("forward_kl", "js_divergence", "alpha_divergence")]


@pytest.mark.parametrize("loss_type,name,div", F_CASES, ids=[f"{c[1]}-{c[2]}" for c in F_CASES])
def test_dpo_trainer_f_divergence_parity(dpo, loss_type, name, div):
    trainer, tb, stats = dpo
    attrs = {"loss_types": [loss_type], "loss_weights": [1.0], "beta": 0.2, "f_divergence_type": div,
             "f_alpha_divergence_coef": 0.4}
    saved = {k: getattr(trainer, k) for k in attrs}
    try:
        for k, v in attrs.items():
            setattr(trainer, k, v)
        with torch.no_grad():
            want = trainer.compute_loss(trainer.model, copy.copy(tb)).item()
    finally:
        for k, v in saved.items():
            setattr(trainer, k, v)
    got = get(name, beta=0.2, f_divergence=div, f_alpha=0.4)(stats).loss.mean().item()
    assert got == pytest.approx(want, rel=1e-4, abs=1e-7), (got, want)
