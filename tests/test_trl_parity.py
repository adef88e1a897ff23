"""First-step loss parity with TRL's DPOTrainer for every objective the two share (1e-4 relative).

One tiny model and four pairs; TRL tokenizes (its prepared dataset gives the ids), TRL's ``compute_loss``
gives its loss, and preftune computes its own from the same ids with ``collate_pairs`` +
``sequence_logps`` + ``batch_stats`` + the objective.
"""
import copy

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from preftune.data.collate import collate_pairs  # noqa: E402
from preftune.data.types import TokenizedPair  # noqa: E402
from preftune.models.logprobs import sequence_logps  # noqa: E402
from preftune.models.tiny import build_model, build_tokenizer  # noqa: E402
from preftune.objectives import get  # noqa: E402
from preftune.objectives.wrappers import log_sum_sq_probs  # noqa: E402
from preftune.kinds import batch_stats  # noqa: E402

pytestmark = pytest.mark.bench

PAIRS = [
    ("The capital of France is", " Paris, a large city.", " Berlin."),
    ("Two plus two equals", " four.", " five, or maybe six or seven."),
    ("Water boils at", " one hundred degrees Celsius at sea level.", " zero degrees."),
    ("The sky is", " blue.", " green with purple dots on a sunny day."),
]

# (TRL config, preftune objective name, preftune hyperparameters)
CASES = [
    ({"loss_type": ["sigmoid"], "beta": 0.1}, "dpo", {"beta": 0.1}),
    ({"loss_type": ["hinge"], "beta": 0.3}, "hinge", {"beta": 0.3}),
    ({"loss_type": ["ipo"], "beta": 0.2}, "ipo", {"beta": 0.2}),
    ({"loss_type": ["exo_pair"], "beta": 0.1, "label_smoothing": 1e-3}, "exo_pair", {"beta": 0.1, "label_smoothing": 1e-3}),
    ({"loss_type": ["nca_pair"], "beta": 0.1}, "nca_pair", {"beta": 0.1}),
    ({"loss_type": ["robust"], "beta": 0.1, "label_smoothing": 0.2}, "rdpo", {"beta": 0.1, "label_smoothing": 0.2}),
    ({"loss_type": ["bco_pair"], "beta": 0.1}, "bco_pair", {"beta": 0.1}),
    ({"loss_type": ["sppo_hard"], "beta": 0.1}, "sppo_hard", {"beta": 0.1}),
    ({"loss_type": ["aot"], "beta": 0.1, "label_smoothing": 0.1}, "aot", {"beta": 0.1, "label_smoothing": 0.1}),
    ({"loss_type": ["aot_unpaired"], "beta": 0.1}, "aot_unpaired", {"beta": 0.1}),
    ({"loss_type": ["apo_zero"], "beta": 0.1}, "apo_zero", {"beta": 0.1}),
    ({"loss_type": ["apo_down"], "beta": 0.1}, "apo_down", {"beta": 0.1}),
    ({"loss_type": ["discopop"], "beta": 0.1, "discopop_tau": 0.05}, "discopop", {"beta": 0.1, "tau": 0.05}),
    ({"loss_type": ["sft"]}, "sft", {}),
    ({"loss_type": ["sigmoid_norm"], "beta": 0.1}, "ln_dpo", {"beta": 0.1}),
    ({"loss_type": ["sigmoid"], "beta": 0.1, "ld_alpha": 0.4}, "ld_dpo", {"beta": 0.1, "alpha": 0.4}),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5], "beta": 0.1}, "rpo", {"beta": 0.1, "alpha": 0.5}),
    ({"loss_type": ["sigmoid"], "beta": 0.1, "f_divergence_type": "forward_kl"}, "dpo",
     {"beta": 0.1, "f_divergence": "forward_kl"}),
    ({"loss_type": ["sigmoid"], "beta": 0.1, "f_divergence_type": "js_divergence"}, "dpo",
     {"beta": 0.1, "f_divergence": "js_divergence"}),
    ({"loss_type": ["ipo"], "beta": 0.1, "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
     "ipo", {"beta": 0.1, "f_divergence": "alpha_divergence", "f_alpha": 0.3}),
    ({"loss_type": ["robust"], "beta": 0.1, "label_smoothing": 0.1, "f_divergence_type": "js_divergence"}, "rdpo",
     {"beta": 0.1, "label_smoothing": 0.1, "f_divergence": "js_divergence"}),
    ({"loss_type": ["sigmoid"], "beta": 0.1, "use_weighting": True}, "wpo", {"beta": 0.1}),
    ({"loss_type": ["ipo"], "beta": 0.1, "use_weighting": True}, "wpo", {"base": "ipo", "beta": 0.1}),
]

TRAINER_ATTRS = {"loss_type": "loss_types", "loss_weights": "loss_weights", "beta": "beta",
                 "label_smoothing": "label_smoothing", "ld_alpha": "ld_alpha",
                 "f_divergence_type": "f_divergence_type", "f_alpha_divergence_coef": "f_alpha_divergence_coef",
                 "use_weighting": "use_weighting"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("parity")
    texts = [p + c for p, c, r in PAIRS] + [p + r for p, c, r in PAIRS]
    tok = build_tokenizer(texts * 5, vocab_size=300)
    model = build_model(len(tok), hidden_size=32, num_layers=2, num_heads=2, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model.save_pretrained(tmp / "m")
    tok.save_pretrained(tmp / "m")
    # the reference differs from the policy (another seed), so that log-ratios are not all zero
    build_model(len(tok), hidden_size=32, num_layers=2, num_heads=2, pad_token_id=tok.pad_token_id, seed=1,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id).save_pretrained(tmp / "r")
    from transformers import AutoModelForCausalLM

    load = lambda d="m": AutoModelForCausalLM.from_pretrained(tmp / d, dtype=torch.float32).eval()  # noqa: E731
    ds = datasets.Dataset.from_dict({"prompt": [p for p, _, _ in PAIRS], "chosen": [c for _, c, _ in PAIRS],
                                     "rejected": [r for _, _, r in PAIRS]})
    # use_weighting=True at construction so TRL's fused head also returns log_sum_sq_probs; the attributes
    # below are switched per case (TRL reads them from the trainer on every compute_loss).
    args = DPOConfig(output_dir=str(tmp / "out"), report_to=[], per_device_train_batch_size=len(PAIRS),
                     use_cpu=True, bf16=False, fp16=False, use_weighting=True, dataset_num_proc=None,
                     logging_steps=1, save_strategy="no")
    trainer = DPOTrainer(load(), ref_model=load("r"), args=args, train_dataset=ds, processing_class=tok)
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    trl_batch = trainer.data_collator(rows)

    policy, ref = load(), load("r")
    pairs = [TokenizedPair(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in rows]
    batch = collate_pairs(pairs, tok.pad_token_id)
    pol = sequence_logps(policy, batch, per_token=True)
    with torch.no_grad():
        rf = sequence_logps(ref, batch, per_token=True)
        logits = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    lss = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    lss[:, 1:] = log_sum_sq_probs(logits[:, :-1])
    lss = lss[batch.seq_row] * batch.seq_mask
    stats = batch_stats(batch, pol, rf)
    B = len(PAIRS)
    stats.extras["chosen_log_sum_sq_probs"] = lss[:B]
    stats.extras["rejected_log_sum_sq_probs"] = lss[B:]
    return trainer, trl_batch, stats


@pytest.mark.parametrize("trl_cfg,name,hp", CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_first_step_loss_matches_trl(setup, trl_cfg, name, hp):
    trainer, trl_batch, stats = setup
    saved = {a: getattr(trainer, a) for a in TRAINER_ATTRS.values()}
    saved_tau = trainer.args.discopop_tau
    try:
        trainer.loss_weights = None
        trainer.use_weighting = False
        trainer.ld_alpha = None
        trainer.f_divergence_type = "reverse_kl"
        for k, v in trl_cfg.items():
            if k == "discopop_tau":
                trainer.args.discopop_tau = v
            else:
                setattr(trainer, TRAINER_ATTRS[k], v)
        if trainer.loss_weights is None:
            trainer.loss_weights = [1.0] * len(trainer.loss_types)
        with torch.no_grad():
            want = trainer.compute_loss(trainer.model, copy.copy(trl_batch)).item()
    finally:
        for a, v in saved.items():
            setattr(trainer, a, v)
        trainer.args.discopop_tau = saved_tau
    got = get(name, **hp)(stats).loss.mean().item()
    assert got == pytest.approx(want, rel=1e-4, abs=1e-7), (name, got, want)


def test_parity_is_not_vacuous(setup):
    """Different objectives give different losses on this batch, so the parity above can fail."""
    _, _, stats = setup
    hc = stats.policy_chosen_logps - stats.reference_chosen_logps
    assert hc.abs().min() > 1e-3  # policy and reference differ
    values = {n: get(n)(stats).loss.mean().item() for n in ("dpo", "ipo", "hinge", "sppo_hard", "ln_dpo")}
    assert len({round(v, 6) for v in values.values()}) == len(values)
