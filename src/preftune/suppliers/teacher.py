"""``teacher_token_kl`` and ``teacher_advantage`` (P60, DCKD and ADPA): per-token quantities that need the
student's distribution *and* a teacher's over the whole vocabulary at every response position.

* ``extras["chosen_teacher_kl"]`` / ``["rejected_teacher_kl"]`` ``[B, T]``: ``KL(pi_T(.|s_t) || pi_theta(.|s_t))``;
* ``extras["chosen_expected_advantage"]`` / ``["rejected_expected_advantage"]`` ``[B, T]``:
  ``sum_a pi_theta(a|s_t) (log pi_T(a|s_t) - log pi_Tref(a|s_t))`` (the objective applies beta);
* ``extras["chosen_teacher_mask"]`` / ``["rejected_teacher_mask"]`` ``[B, T]``: the response positions.

Both are differentiable in the student. The teachers are loaded once, from the objective's
``teacher_model`` / ``teacher_ref_model`` hyperparameters (model directories), frozen, in eval mode; they
must share the student's tokenizer (checked: the vocabulary, and the output size). The student's final
hidden states are those its log-prob forward kept (no second forward); all heads are applied in
checkpointed chunks, so no ``[tokens, vocab]`` tensor outlives its chunk -- as :mod:`.token_kl` does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ConfigError
from ..models.hidden import label_states
from ..models.logprobs import head_fn, label_sources
from ..objectives.base import walk
from ..objectives.distill import expected_advantage, forward_kl
from ..reference import FrozenModel
from .base import MicroBatch, Supplier, register_supplier

_KL, _ADV = "teacher_token_kl", "teacher_advantage"
_FLAGS = {"teacher_model": "--teacher-model", "teacher_ref_model": "--teacher-ref-model"}


def _teacher_objectives(objective: Any) -> list[Any]:
    # the terms that name their teachers (not a composition, whose needs are its terms')
    return [o for o in walk(objective)
            if (_KL in o.needs or _ADV in o.needs) and "teacher_model" in o.hyperparameters()]


def _paths(objective: Any) -> dict[str, str]:
    """The teacher directories the objective (or its terms) name; refuses missing or conflicting ones."""
    out: dict[str, str] = {}
    for o in _teacher_objectives(objective):
        wanted = ["teacher_model"] + (["teacher_ref_model"] if _ADV in o.needs else [])
        for key in wanted:
            path = str(getattr(o, key, "") or "")
            if not path:
                raise ConfigError(f"objective '{o.name}' needs {key.replace('_', ' ')}: set {_FLAGS[key]} DIR "
                                  "(a model with the student's tokenizer)")
            if out.get(key, path) != path:
                raise ConfigError(f"objective '{o.name}': {key} {path} differs from another term's {out[key]}; "
                                  "a run distils from one teacher")
            out[key] = path
    return out


def check_same_tokenizer(student: Any, teacher: Any, path: str) -> None:
    """A teacher must score the student's token ids: the same output size, and (where both directories have
    a tokenizer) the same vocabulary. One-line ConfigError otherwise."""
    from ..models.loading import load_tokenizer, unwrap

    sv = int(unwrap(student).get_output_embeddings().weight.shape[0])
    tv = int(unwrap(teacher).get_output_embeddings().weight.shape[0])
    if sv != tv:
        raise ConfigError(f"teacher {path} has {tv} output tokens, the student {sv}: distillation needs the "
                          "student's tokenizer")
    student_dir = str(getattr(unwrap(student).config, "_name_or_path", "") or "")
    dirs = [Path(d) for d in (student_dir, path)]
    if not all(d.is_dir() and (d / "tokenizer_config.json").exists() for d in dirs):
        return  # nothing more to compare (a student built in memory): the output sizes agree
    a, b = (load_tokenizer(str(d)).get_vocab() for d in dirs)
    if a != b:
        tok = next(iter(sorted(set(a.items()) ^ set(b.items()), key=lambda kv: kv[1])), ("?",))[0]
        raise ConfigError(f"teacher {path} has another tokenizer than the student {student_dir} (token {tok!r} "
                          "differs): distillation needs the student's tokenizer")


def _chunk(pol_head: Callable, t_head: Callable, r_head: Callable | None, hp: torch.Tensor, ht: torch.Tensor,
           hr: torch.Tensor | None) -> torch.Tensor:
    zs = pol_head(hp)
    with torch.no_grad():
        zt = t_head(ht)
        zr = r_head(hr) if r_head is not None else None
    kl = forward_kl(zs, zt)
    adv = expected_advantage(zs, zt, zr) if zr is not None else torch.zeros_like(kl)
    return torch.stack([kl, adv], -1)


def teacher_terms(model: Any, teacher: FrozenModel, teacher_ref: FrozenModel | None, batch: Any,
                  chunk_size: int = 1024, policy_states: torch.Tensor | None = None) -> torch.Tensor:
    """``[S, T, 2]``: per response position of each sequence, the forward KL from ``teacher`` to the student
    and (given ``teacher_ref``) the student's expected advantage ``sum_a pi_theta(a) log(pi_T(a) / pi_Tref(a))``;
    0 elsewhere; differentiable in the student."""
    from torch.utils.checkpoint import checkpoint

    r, t, _ = label_sources(batch)
    hp = policy_states if policy_states is not None else label_states(model, batch)
    ht = teacher.label_states(batch)
    hr = teacher_ref.label_states(batch) if teacher_ref is not None else None
    heads = (head_fn(model), teacher.output_head(), teacher_ref.output_head() if teacher_ref is not None else None)
    grad = torch.is_grad_enabled() and hp.requires_grad
    vals = []
    for i in range(0, hp.shape[0], chunk_size):
        args = (*heads, hp[i:i + chunk_size], ht[i:i + chunk_size], None if hr is None else hr[i:i + chunk_size])
        vals.append(checkpoint(_chunk, *args, use_reentrant=False) if grad else _chunk(*args))
    R, T = batch.input_ids.shape
    rows = torch.zeros(R, T, 2, dtype=torch.float32, device=hp.device)
    if vals:
        rows = rows.index_put((r, t), torch.cat(vals).to(rows.dtype))
    return rows[batch.seq_row] * batch.seq_mask.unsqueeze(-1)


@register_supplier
class TeacherTerms(Supplier):
    provides = (_KL, _ADV)
    needs_policy_states = True

    def __init__(self) -> None:
        # loaded teachers, by directory and device: a composition's terms share one copy
        self._loaded: dict[tuple[str, str], FrozenModel] = {}
        self._checked: set[tuple[int, str]] = set()

    def check(self, objective: Any, reference: Any) -> None:
        _paths(objective)

    def prepare(self, objective: Any, reference: Any, train_items: Any, other_items: Any, pad_id: int,
                device: Any) -> dict[str, Any] | None:
        paths = _paths(objective)
        wanted = {str(Path(p).resolve()) if Path(p).exists() else p for p in paths.values()}
        self._loaded = {k: v for k, v in self._loaded.items() if k[0] in wanted}  # no earlier run's teachers
        for path in paths.values():
            self._teacher(path, device)
        return {"teachers": paths}

    def _teacher(self, path: str, device: Any) -> FrozenModel:
        from ..models.loading import load_model

        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:  # "cuda" and the batches' "cuda:0" are one device
            dev = torch.device("cuda", torch.cuda.current_device())
        key = (str(Path(path).resolve()) if Path(path).exists() else path, str(dev))
        if key not in self._loaded:
            self._loaded = {k: v for k, v in self._loaded.items() if k[1] == key[1]}  # one device's copies
            self._loaded[key] = FrozenModel(load_model(path, device=dev), name=path)
        return self._loaded[key]

    def supply(self, stats: Any, step: MicroBatch) -> None:
        paths = _paths(step.objective)
        device = step.batch.input_ids.device
        teacher = self._teacher(paths["teacher_model"], device)
        ref = self._teacher(paths["teacher_ref_model"], device) if "teacher_ref_model" in paths else None
        for key, m in (("teacher_model", teacher), ("teacher_ref_model", ref)):
            if m is not None and (id(step.model), paths[key]) not in self._checked:
                check_same_tokenizer(step.model, m.model, paths[key])
                self._checked.add((id(step.model), paths[key]))
        states = step.policy.label_states if step.policy is not None else None
        vals = teacher_terms(step.model, teacher, ref, step.batch, step.chunk_size, states)
        B = step.batch.num_examples
        mask = step.batch.seq_mask.bool()
        stats.extras["chosen_teacher_mask"], stats.extras["rejected_teacher_mask"] = mask[:B], mask[B:]
        stats.extras["chosen_teacher_kl"], stats.extras["rejected_teacher_kl"] = vals[:B, :, 0], vals[B:, :, 0]
        if ref is not None:
            adv = vals[..., 1]
            stats.extras["chosen_expected_advantage"], stats.extras["rejected_expected_advantage"] = adv[:B], adv[B:]
