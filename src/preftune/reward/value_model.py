"""A reward model made of a causal LM body and a linear value head: build, train, save, load, score.

This is the "causal LM with a value head" of TRL (``AutoModelForCausalLMWithValueHead``) and OpenRLHF (its reward
model): the body's last (normed) hidden state goes through :class:`~preftune.models.value_head.ValueHead`, and the
reward of a sequence is the value at its last real token. Against the other variant, a sequence-classification
score head (:func:`~preftune.reward.model.load_reward_model`), it keeps the body a plain causal LM -- the same
checkpoint a PPO critic or a policy starts from -- and it reads the end-of-sequence token itself.

:class:`CausalLMWithValueHead` answers ``model(input_ids, attention_mask).logits`` with one column, the reward, like
a sequence classifier with one label, so the reward trainer's :class:`~preftune.reward.forward.ScoreForward` and
:class:`~preftune.reward.model.RewardModel` use it unchanged.

On disk (``final/``): the body as a plain causal LM (``config.json`` + ``model.safetensors``: loads with
``AutoModelForCausalLM.from_pretrained``), the tokenizer, and the head in its own file ``value_head.safetensors``
with TRL's key names (``v_head.summary.weight``, ``v_head.summary.bias``). Under LoRA the body is merged, and its
adapter kept in ``final/adapter``, as the trainer does for policies.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.value_head import ValueHead, at_last_token

VALUE_HEAD_FILE = "value_head.safetensors"
_PREFIX = "v_head."


class CausalLMWithValueHead(nn.Module):
    """A causal LM body (``pretrained_model``, TRL's name; a peft model under LoRA) and a value head (``v_head``).

    * :meth:`values` -- per-token values ``[B, T]`` (0 at padding): what a PPO critic reads;
    * :meth:`forward` -- the reward of each sequence as ``.logits`` ``[B, 1]`` (the value at its last real token).
    """

    def __init__(self, body: Any, head: ValueHead | None = None, *, bias: bool = True, dropout: float = 0.0,
                 init_std: float | None = None):
        super().__init__()
        self.pretrained_model = body
        self.v_head = head if head is not None else ValueHead(hidden_size_of(body), bias=bias, dropout=dropout,
                                                               init_std=init_std)
        if self.v_head.hidden_size != hidden_size_of(body):
            raise ConfigError(f"value head of size {self.v_head.hidden_size} does not fit a body of hidden size "
                              f"{hidden_size_of(body)}")
        self.v_head.to(_device_of(body))

    @property
    def config(self) -> Any:
        """The body's config (pad token, position limit): what the trainer and the scorers read."""
        return _base(self.pretrained_model).config

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The body's last hidden state ``[B, T, H]`` (after the final norm: what the LM head reads).

        Positions count real tokens only (``cumsum(mask) - 1``, as OpenRLHF), so a left-padded sequence gets
        the same value as the same sequence unpadded; with right padding that is the usual ``0, 1, 2, ...``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        base = _base(self.pretrained_model)
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
        if decoder is not None and decoder is not base:
            return decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                           use_cache=False).last_hidden_state
        # no separate decoder: the full model's last hidden state, as TRL reads it (costs the LM head's logits)
        out = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False,
                   output_hidden_states=True)
        return out.hidden_states[-1]

    def values(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Per-token values ``[B, T]`` float32, 0 where the mask is 0."""
        return self.v_head(self.hidden_states(input_ids, attention_mask), attention_mask)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **_: Any) -> Any:
        """``.logits`` ``[B, 1]``: each sequence's value at its last real token. Other keyword arguments
        (``use_cache``, ...) are accepted and ignored, so callers of sequence classifiers can call this."""
        from transformers.modeling_outputs import SequenceClassifierOutputWithPast

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        rewards = at_last_token(self.values(input_ids, attention_mask), attention_mask)
        return SequenceClassifierOutputWithPast(logits=rewards.unsqueeze(-1))

    def apply_lora(self, lora: Any) -> "CausalLMWithValueHead":
        """LoRA on the body only (peft freezes the body's other weights); the head stays fully trainable."""
        from ..models.loading import apply_lora, is_peft

        if not is_peft(self.pretrained_model):
            self.pretrained_model = apply_lora(self.pretrained_model, lora)
        return self

    def save_pretrained(self, directory: str | Path, safe_serialization=True, **_: Any) -> None:  # only safetensors
        """The body (merged under LoRA, its adapter in ``adapter/``) and ``value_head.safetensors``.

        Called by the trainer's ``save_final`` inside its atomic temporary directory."""
        from safetensors.torch import save_file

        from ..models.loading import is_peft

        if not safe_serialization:
            raise ConfigError("a value-head reward model is saved as safetensors only")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        body = self.pretrained_model
        if is_peft(body):
            body.save_pretrained(out / "adapter")
            body = copy.deepcopy(body).merge_and_unload()
        body.save_pretrained(out, safe_serialization=True)
        tensors = {_PREFIX + k: v.detach().contiguous().cpu() for k, v in self.v_head.state_dict().items()}
        dropout = self.v_head.dropout.p if isinstance(self.v_head.dropout, nn.Dropout) else 0.0
        save_file(tensors, str(out / VALUE_HEAD_FILE), metadata={"format": "pt", "dropout": repr(float(dropout))})


def hidden_size_of(body: Any) -> int:
    """Width of the body's last hidden state (OPT projects it to ``word_embed_proj_dim``, as TRL notes)."""
    cfg = _base(body).config
    size = getattr(cfg, "word_embed_proj_dim", None) or getattr(cfg, "hidden_size", None)
    if not isinstance(size, int):
        raise ConfigError(f"cannot tell the hidden size of {type(_base(body)).__name__} from its config")
    return size


def _base(body: Any) -> Any:
    from ..models.loading import unwrap

    return unwrap(body)


def _device_of(body: Any) -> torch.device:
    p = next(iter(body.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def is_value_head_model(path: str | Path) -> bool:
    """Whether ``path`` is a saved value-head reward model (it has ``value_head.safetensors``)."""
    return (Path(path) / VALUE_HEAD_FILE).is_file()


def read_value_head(path: str | Path, hidden_size: int | None = None) -> ValueHead:
    """The :class:`ValueHead` saved in ``path`` (a ``value_head.safetensors`` file or a directory holding one).

    One-line ConfigError naming the file when it is missing, unreadable or of the wrong shape."""
    from safetensors import safe_open

    f = Path(path)
    f = f / VALUE_HEAD_FILE if f.is_dir() else f
    if not f.is_file():
        raise ConfigError(f"{f}: no value head here (expected {VALUE_HEAD_FILE} beside the body's weights)")
    try:
        with safe_open(str(f), framework="pt") as st:
            keys, meta = set(st.keys()), st.metadata() or {}
            tensors = {k: st.get_tensor(k) for k in keys}
    except Exception as e:  # noqa: BLE001 - a corrupt file surfaces as several error types
        raise ConfigError(f"{f}: not a readable safetensors file ({str(e).splitlines()[0] if str(e) else e})") from None
    w, b = tensors.get(_PREFIX + "summary.weight"), tensors.get(_PREFIX + "summary.bias")
    unknown = sorted(keys - {_PREFIX + "summary.weight", _PREFIX + "summary.bias"})
    if w is None or unknown:
        what = f"unexpected tensor {unknown[0]}" if unknown else "no tensor v_head.summary.weight"
        raise ConfigError(f"{f}: {what}; a value head holds v_head.summary.weight and optionally v_head.summary.bias")
    if w.dim() != 2 or w.shape[0] != 1 or (b is not None and tuple(b.shape) != (1,)):
        raise ConfigError(f"{f}: v_head.summary.weight has shape {tuple(w.shape)}; a value head's is (1, hidden)")
    if hidden_size is not None and w.shape[1] != hidden_size:
        raise ConfigError(f"{f}: the value head reads hidden states of size {w.shape[1]}, the body's are {hidden_size}")
    try:
        dropout = float(meta.get("dropout", "0.0"))
    except ValueError:
        raise ConfigError(f"{f}: metadata dropout={meta.get('dropout')!r} is not a number") from None
    head = ValueHead(int(w.shape[1]), bias=b is not None, dropout=dropout)
    head.load_state_dict({k[len(_PREFIX):]: v.float() for k, v in tensors.items()})
    return head


def load_value_head_model(name_or_path: str | Path, *, tokenizer: Any = None, dtype: str = "fp32",
                          device: str | torch.device = "cpu", trust_remote_code: bool = False,
                          gradient_checkpointing: bool = False, lora: Any = None, bias: bool = True,
                          dropout: float = 0.0, init_std: float | None = None, seed: int = 0) -> CausalLMWithValueHead:
    """A causal LM body with a value head: the saved head when the directory has ``value_head.safetensors``,
    else a new one (``bias``, ``dropout``, ``init_std``: see :class:`ValueHead`; TRL initialises it the same
    way), drawn from its own generator seeded with ``seed`` -- so that two runs with one seed start from one head
    whatever ran before (the trainer seeds only after the model is built). ``lora``: a
    :class:`~preftune.models.loading.LoraSettings` to put adapters on the body. The body's ``pad_token_id`` comes
    from ``tokenizer`` as in :func:`~preftune.reward.model.load_reward_model`."""
    from ..models.loading import load_model

    body = load_model(str(name_or_path), dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                      trust_remote_code=trust_remote_code, device=device)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        body.config.pad_token_id = pad
    if is_value_head_model(name_or_path):
        head = read_value_head(name_or_path, hidden_size_of(body))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = ValueHead(hidden_size_of(body), bias=bias, dropout=dropout, init_std=init_std)
    model = CausalLMWithValueHead(body, head)
    if lora is not None and getattr(lora, "r", 0) > 0:
        model.apply_lora(lora)
    return model


def load_value_reward_model(path: str | Path, **kw: Any) -> Any:
    """A :class:`~preftune.reward.model.RewardModel` (batched, no gradient) over a saved value-head model."""
    from ..models.loading import load_tokenizer
    from .model import RewardModel

    tok = load_tokenizer(str(path))
    return RewardModel(load_value_head_model(path, tokenizer=tok), tok, **kw)


def train_value_head_reward_model(config: Any, *, tokenizer: Any = None, train_examples: Sequence[Any] | None = None,
                                  eval_examples: Sequence[Any] | None = None, callbacks: Sequence[Any] = (),
                                  bias: bool = True, dropout: float = 0.0, init_std: float | None = None) -> Any:
    """:func:`~preftune.reward.train.train_reward_model` with ``config.model`` loaded as a causal LM plus a value
    head. LoRA (``config.lora_r > 0``) goes on the body here; the trainer is then given ``lora_r=0`` so that it
    does not wrap the whole model again (the run's ``config.yaml`` records ``lora_r: 0``; ``final/adapter`` holds
    the adapter)."""
    from ..models.loading import LoraSettings
    from ..train.setup import load_tokenizer_for, pick_device, quiet_transformers
    from .train import train_reward_model

    cfg = config
    if not cfg.model:
        raise ConfigError("no model given: set --model")
    tokenizer = load_tokenizer_for(cfg, tokenizer)
    lora = LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target) if cfg.lora_r > 0 else None
    with quiet_transformers(not cfg.progress):
        model = load_value_head_model(cfg.model, tokenizer=tokenizer, dtype=cfg.dtype, device=pick_device(cfg.device),
                                      trust_remote_code=cfg.trust_remote_code,
                                      gradient_checkpointing=cfg.gradient_checkpointing, lora=lora, bias=bias,
                                      dropout=dropout, init_std=init_std, seed=cfg.seed)
    if lora is not None:
        cfg = cfg.replace(lora_r=0)
    return train_reward_model(cfg, model=model, tokenizer=tokenizer, train_examples=train_examples,
                              eval_examples=eval_examples, callbacks=callbacks)


__all__ = ["CausalLMWithValueHead", "VALUE_HEAD_FILE", "hidden_size_of", "is_value_head_model",
           "load_value_head_model", "load_value_reward_model", "read_value_head", "train_value_head_reward_model"]
