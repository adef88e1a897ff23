"""Models: loading, tiny offline models, chunked response log-probs, hidden states, scoring
(pair and response log-probs without gradients) and generation."""
from .loading import LoraSettings, apply_lora, is_peft, load_model, load_tokenizer, unwrap
from .logprobs import SeqLogps, gather_sequences, head_fn, model_inputs, sequence_logps, token_logps
from .tiny import build_model, build_tokenizer, make_tiny
from .hidden import aligned_hidden_states, decoder_hidden, label_states
from .scoring import PairLogps, pair_logps, response_logps
# generation: ``from preftune.models.generate import generate`` (not re-exported here, so that
# ``preftune.models.generate`` stays the module and not the function)

__all__ = ["LoraSettings", "PairLogps", "SeqLogps", "aligned_hidden_states", "apply_lora",
           "build_model", "build_tokenizer", "decoder_hidden", "gather_sequences", "head_fn", "is_peft",
           "label_states", "load_model", "load_tokenizer", "make_tiny", "model_inputs", "pair_logps",
           "response_logps", "sequence_logps", "token_logps", "unwrap"]
