"""preftune.ranking: preference and ranking losses beyond language models (retrieval, recommendation,
classification, distillation, representation learning). One module per method; each loss is a small function or
``torch.nn.Module`` that drops into any PyTorch loop, with its paper ID and equation in the docstring."""
