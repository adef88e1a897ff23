"""``density_ratio`` (BCO's UDM, P56 sec. 4.2, eq. 12): once, before training, every prompt is embedded by
the *reference* model (mean of its last-layer hidden states over the prompt tokens; the paper uses a
separate sentence-embedding model), a logistic-regression classifier separates the prompts of desirable
from undesirable examples (:func:`preftune.objectives.unpaired.fit_density_ratio`), and each example gets
``extras['density_ratio'] = p_D(x) / p_U(x)``, which the collators carry into the batch. The reference does
not change during training, so a resumed run gets the same weights."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..data.collate import collate_unpaired
from ..data.types import TokenizedUnpaired
from ..errors import ConfigError
from .base import Supplier, register_supplier, require_reference_model


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
                          other_items: Sequence[Any], pad_id: int, device: Any) -> dict[str, float]:
    """Fit the prompt classifier on the training examples and write ``extras['density_ratio']`` into every
    training and ``other`` (eval) example. Returns a summary."""
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


@register_supplier
class DensityRatio(Supplier):
    provides = ("density_ratio",)

    def check(self, objective: Any, reference: Any) -> None:
        require_reference_model(objective, reference, "hidden_states", "(udm) embeds prompts with the reference model")

    def prepare(self, objective: Any, reference: Any, train_items: Sequence[Any], other_items: Sequence[Any],
                pad_id: int, device: Any) -> dict[str, Any] | None:
        s = attach_density_ratios(objective, reference, train_items, other_items, pad_id, device)
        print(f"preftune: density ratios (BCO UDM) over {s['prompts']} prompts: min {s['min']:.3g}, "
              f"mean {s['mean']:.3g}, max {s['max']:.3g}")
        return s
