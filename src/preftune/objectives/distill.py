"""Preference distillation from an aligned teacher into a smaller student (P60: Gao et al. 2025,
"Advantage-Guided Distillation for Preference Alignment in Small Language Models", ICLR 2025).

Two objectives over the student's token distributions ``pi_theta(.|s_t)`` at the response positions
``s_t = (x, y_<t)`` of a pair, with the teacher's distributions supplied by
:mod:`preftune.suppliers.teacher` (the teacher must share the student's tokenizer):

* ``dckd`` -- Dual-Constrained Knowledge Distillation (P60 sec. 3.1): two token-level *forward* KL
  constraints from the aligned (DPO) teacher ``pi_dpo``, one on the chosen and one on the rejected
  response::

      L_DCKD = w_c * mean_t KL(pi_dpo(.|s^w_t) || pi_theta(.|s^w_t))
             + w_l * mean_t KL(pi_dpo(.|s^l_t) || pi_theta(.|s^l_t))

* ``adpa`` -- Advantage-Guided Distillation for Preference Alignment (P60 sec. 3.2): the teacher's
  token-level advantage, the DPO teacher against its own reference (the SFT teacher ``pi_ref``),
  evaluated for *every* token of the vocabulary, weights the student's whole distribution::

      A(s_t, a) = beta * (log pi_dpo(a|s_t) - log pi_ref(a|s_t))
      L_ADPA    = - mean_t sum_a pi_theta(a|s_t) * A(s_t, a)

  on the responses the authors train it on: the ``rejected`` column, which in their pipeline holds the
  student's own samples (``chosen`` holds the reference answer, trained with SFT).

The authors train with a sum of terms: SFT on the chosen response, DCKD's two constraints, and ADPA
(``ADPA+`` is ADPA started from the DCKD-trained student). In preftune the SFT term is the ``sft``
objective (its ``normalize="batch"`` is the authors' token mean), so their recipes are compositions:
``--loss "sft:1,dckd:1"`` (DCKD), ``--loss "sft:1,adpa:1"`` (ADPA), a DCKD run then an ADPA run from it
(ADPA+), or ``"sft:1,dckd:1,adpa:1"`` to train with all terms at once.

Authors' code: SLIT-AI/ADPA, ``scripts/run_distill_dpo.py``, ``DistillTrainer.get_batch_loss_metrics`` with
``get_kl_loss`` (DCKD: ``F.kl_div(log pi_theta, pi_teacher)``, forward KL, per token, averaged over the
batch's response tokens; weights ``chosen_distil_weight`` / ``rejected_distil_weight``) and ``get_reverse_ce``
(ADPA: ``-(pi_theta * A).sum(-1)`` averaged over the rejected response's tokens), and
``utils/merge_logits_adpa_dataset.py::get_margin_logp_token`` (``A = log(p_dpo / p_ref)`` per token). The
SLIT-AI/ADPA repository itself is not in the index this was read from (no commit to name); the file read
is a verbatim copy of its ``scripts/run_distill_dpo.py`` (header ``sys.path.append(os.path.expanduser("~/ADPA"))``),
and its forks kaist-siit-lab/StarLab_Preference-Distillation-via-Value-based-Reinforcement-Learning @ 0fe5e93
and PhiVanDat123/riskKD @ 11a1df6 carry the same ``get_kl_loss`` / ``get_reverse_ce``.

Where preftune differs from that code, and why:

* the code stores the teacher's top-50 tokens per position plus one bucket for the rest of the
  vocabulary (``utils/compress_logits.py::load_input_and_target_probs_fast``): DCKD's KL is over those 51
  entries, and ADPA's advantage is zero off the DPO teacher's top 50. The paper's KL and advantage are
  over the vocabulary; preftune computes both over the full vocabulary (in chunks, never stored);
* that loader also clamps its targets to ``[1e-8, 1 - 1e-8]``, which for ADPA clamps the *advantage*
  (a log-ratio, often negative or above 1) into that range: tokens the teacher disfavours get ~0 instead
  of a negative advantage. The paper's advantage is the unclamped log-ratio; preftune follows the paper;
* the code has no ``beta`` in the advantage (it folds into ``adpa_weight``); preftune keeps the paper's
  ``beta`` (the DPO teacher's), so the scale is explicit;
* the README computes ``pi_ref``'s log-probs with the DCKD *student* checkpoint, while the paper's
  ``pi_ref`` is the reference (SFT) teacher: preftune follows the paper (``teacher_ref_model``);
* the code's optional ``adpa_importance_sampling`` (a sequence-level ratio) is off in its recipes and
  not implemented here.

The paper's text beyond its abstract could not be read from this machine; the equations above are the
authors' code's, cross-checked against the abstract (two KL constraints; an advantage of the aligned
teacher against its reference, at the distribution level).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Objective, ObjectiveOutput, PairStats, hp, mean_metric, register, require_extras

# ----------------------------------------------------------------------------- pure functions of logits


def forward_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``KL(p_T || p_S) = sum_a p_T(a) (log p_T(a) - log p_S(a))`` over the last dim (P60 sec. 3.1, the
    DCKD constraint). Gradient flows into the student only."""
    ls = torch.log_softmax(student_logits.float(), -1)
    lt = torch.log_softmax(teacher_logits.detach().float(), -1)
    return (lt.exp() * (lt - ls)).sum(-1)


def token_advantage(teacher_logits: Tensor, teacher_ref_logits: Tensor, beta: float = 1.0) -> Tensor:
    """``A(s, a) = beta * (log pi_dpo(a|s) - log pi_ref(a|s))`` for every token ``a`` (P60 sec. 3.2)."""
    lt = torch.log_softmax(teacher_logits.detach().float(), -1)
    lr = torch.log_softmax(teacher_ref_logits.detach().float(), -1)
    return beta * (lt - lr)


def expected_advantage(student_logits: Tensor, teacher_logits: Tensor, teacher_ref_logits: Tensor,
                       beta: float = 1.0) -> Tensor:
    """``sum_a pi_theta(a|s) A(s, a)``: the student's expected teacher advantage (P60 sec. 3.2; ADPA
    maximises it). Gradient flows into the student only."""
    p = torch.softmax(student_logits.float(), -1)
    return (p * token_advantage(teacher_logits, teacher_ref_logits, beta)).sum(-1)


def reduce_tokens(values: Tensor, mask: Tensor, normalize: str) -> Tensor:
    """Per-token ``[B, T]`` values -> ``[B]``. ``batch``: the batch's token mean given to every example
    (the authors' reduction); ``sequence``: each response's own token mean; ``none``: each response's sum."""
    m = mask.to(values.dtype)
    sums = (values * m).sum(-1)
    if normalize == "none":
        return sums
    if normalize == "sequence":
        return sums / m.sum(-1).clamp(min=1)
    return (sums.sum() / m.sum().clamp(min=1)).expand_as(sums)


_NORMALIZE = ("batch", "sequence", "none")
_TEACHER_HELP = "the aligned (DPO) teacher: a model directory with the student's tokenizer"


def _side(stats: PairStats, name: str, side: str, key: str) -> tuple[Tensor, Tensor]:
    require_extras(stats, name, f"{side}_{key}", f"{side}_teacher_mask")
    return stats.extras[f"{side}_{key}"], stats.extras[f"{side}_teacher_mask"]


@register
@dataclass
class DCKD(Objective):
    """Dual-Constrained Knowledge Distillation (P60 sec. 3.1): forward KL from the aligned teacher on both
    responses of a pair, ``w_c * mean_t KL(pi_T || pi_theta)(chosen) + w_l * mean_t KL(pi_T || pi_theta)(rejected)``.

    Reads ``extras["chosen_teacher_kl"]`` / ``["rejected_teacher_kl"]`` ``[B, T]`` and their masks
    (supplier ``teacher_token_kl``, :mod:`preftune.suppliers.teacher`). The authors add SFT on the chosen
    response: ``--loss "sft:1,dckd:1"``. Authors' code: see the module docstring
    (SLIT-AI/ADPA ``scripts/run_distill_dpo.py::DistillTrainer.get_kl_loss``)."""

    name = "dckd"
    paper = "P60 (ADPA paper) sec. 3.1, DCKD: forward KL on chosen and rejected"
    needs_reference = False
    needs = ("teacher_token_kl",)
    chosen_weight: float = hp(1.0, "weight of the KL constraint on the chosen response", low=0.0)
    rejected_weight: float = hp(1.0, "weight of the KL constraint on the rejected response", low=0.0)
    normalize: str = hp("batch", "how to average token values", choices=_NORMALIZE)
    teacher_model: str = hp("", _TEACHER_HELP)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        kc, mc = _side(stats, self.name, "chosen", "teacher_kl")
        kr, mr = _side(stats, self.name, "rejected", "teacher_kl")
        lc, lr = reduce_tokens(kc, mc, self.normalize), reduce_tokens(kr, mr, self.normalize)
        loss = self.chosen_weight * lc + self.rejected_weight * lr
        return ObjectiveOutput(loss, {"distill/kl_chosen": mean_metric(lc), "distill/kl_rejected": mean_metric(lr)})


@register
@dataclass
class ADPA(Objective):
    """Advantage-Guided Distillation for Preference Alignment (P60 sec. 3.2):
    ``-mean_t sum_a pi_theta(a|s_t) * beta * (log pi_dpo(a|s_t) - log pi_ref(a|s_t))`` over the responses
    named by ``on`` (the authors': ``rejected``, which their pipeline fills with the student's own samples).

    Reads ``extras["<side>_expected_advantage"]`` ``[B, T]`` (``sum_a pi_theta(a) log(pi_dpo(a)/pi_ref(a))``,
    beta not applied) and its masks (supplier ``teacher_advantage``). The authors add SFT on the chosen
    response: ``--loss "sft:1,adpa:1"``. Authors' code: see the module docstring
    (SLIT-AI/ADPA ``scripts/run_distill_dpo.py::DistillTrainer.get_reverse_ce``)."""

    name = "adpa"
    paper = "P60 (ADPA paper) sec. 3.2, ADPA: advantage of the DPO teacher over its reference"
    needs_reference = False
    needs = ("teacher_advantage",)
    beta: float = hp(0.1, "inverse temperature of the implicit reward", low=0.0, low_open=True)
    on: str = hp("rejected", "which responses carry the advantage", choices=("rejected", "chosen", "both"))
    normalize: str = hp("batch", "how to average token values", choices=_NORMALIZE)
    teacher_model: str = hp("", _TEACHER_HELP)
    teacher_ref_model: str = hp("", "the teacher's reference (its SFT model): a model directory, same tokenizer")

    def __call__(self, stats: PairStats) -> ObjectiveOutput:
        self.check_stats(stats)
        sides = ("chosen", "rejected") if self.on == "both" else (self.on,)
        loss = torch.zeros_like(stats.policy_chosen_logps, dtype=torch.float32)
        metrics = {}
        for side in sides:
            adv, mask = _side(stats, self.name, side, "expected_advantage")
            term = self.beta * reduce_tokens(adv, mask, self.normalize)
            loss = loss - term
            metrics[f"adpa/advantage_{side}"] = mean_metric(term)
        return ObjectiveOutput(loss, metrics)
