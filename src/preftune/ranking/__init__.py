"""preftune.ranking: preference and ranking losses beyond language models (retrieval, recommendation,
classification, distillation, representation learning). One module per method; each loss is a small function or
``torch.nn.Module`` that drops into any PyTorch loop, with its paper ID and equation in the docstring.

>>> import torch
>>> from preftune.ranking import ranknet_loss, mw_loss
>>> scores, relevance = torch.tensor([[2.0, 1.0, 0.5]]), torch.tensor([[2.0, 0.0, 1.0]])
>>> float(ranknet_loss(scores, relevance)) > 0
True
>>> from preftune.ranking import get
>>> loss = get("mw", temperature=0.5)     # any method by name: preftune.ranking.available(), preftune ranking list

=========================================  ===========================================  ==============================
method (paper)                             module: main entry points                    replaces (benchmarks/ranking/)
=========================================  ===========================================  ==============================
P22 RankList                               ranklist: ranklist_loss, ranknet_loss,       RankNet, ListNet (NDCG@10)
                                           listnet_loss, ndcg_at_k
P45 Plackett-Luce distillation             pld: pld_loss, kd_loss                       CE + KL distillation
P43 Mann-Whitney / AUC loss                mann_whitney: mw_loss, roc_auc,              InfoNCE (AUC, ECE)
                                           expected_calibration_error
P44 label-distributionally robust losses   ldr: ldr_kl_loss, ALDRKLLoss                 cross-entropy, label noise
P36 iSogCLR                                isogclr: ISogCLRLoss                         SimCLR (infonce: nt_xent)
P27 uniformity and tolerance               uniformity: uniformity, tolerance            (metrics; temperature sweep)
P41 AMCL                                   amcl: AMCLLoss                               one projection head
P68 GroCo                                  groco: groco_loss, GroCoLoss, diff_sort      CE / pairwise logistic
P50 UNPG                                   unpg: unpg_loss, UNPGHead                    CosFace
P17 dual-head KD                           dual_head_kd: DualHead, DualHeadKDLoss       single-head KD
P49 P2C                                    p2c: p2c_loss, PreferenceHeads               CE with label noise
P71 personalised denoising                 denoise: PLDSampler, pld_select, bpr_loss    BPR with noisy clicks
P62 SAF                                    saf: SAF, trajectory_loss                    SGD, SAM (cost per step)
P75 IBCL                                   ibcl: KnowledgeBase, fit_posterior           one model per trade-off
=========================================  ===========================================  ==============================

Measured results and the commands that reproduce them: docs/ranking-part1.md, docs/ranking-part2.md.
"""
from .amcl import AMCLLoss
from .denoise import PLDSampler, bpr_loss, pld_probabilities, pld_select
from .dual_head_kd import DualHead, DualHeadKDLoss, binary_kl, binary_kl_norm, kd_kl
from .groco import GroCoLoss, diff_sort, groco_loss
from .ibcl import DiagGaussian, KnowledgeBase, convex_combination, fit_posterior, gaussian_prior, hdr, kl_diag
from .infonce import info_nce, nt_xent
from .isogclr import ISogCLRLoss
from .ldr import ALDRKLLoss, ldr_kl_loss
from .mann_whitney import expected_calibration_error, mw_loss, roc_auc
from .p2c import PreferenceHeads, p2c_loss, preference_targets
from .pld import kd_loss, pld_loss
from .registry import available, describe, get
from .ranklist import listnet_loss, ndcg_at_k, progressive_skip, ranklist_loss, ranknet_loss
from .saf import SAF, TrajectoryBuffer, trajectory_loss
from .uniformity import negative_penalty_weights, tolerance, uniformity
from .unpg import UNPGHead, unpg_loss

__all__ = ["available", "describe", "get", "ALDRKLLoss", "AMCLLoss", "DiagGaussian", "DualHead", "DualHeadKDLoss", "GroCoLoss", "ISogCLRLoss",
           "KnowledgeBase", "PLDSampler", "PreferenceHeads", "SAF", "TrajectoryBuffer", "UNPGHead", "binary_kl",
           "binary_kl_norm", "bpr_loss", "convex_combination", "diff_sort", "expected_calibration_error",
           "fit_posterior", "gaussian_prior", "groco_loss", "hdr", "info_nce", "kd_kl", "kd_loss", "kl_diag",
           "ldr_kl_loss", "listnet_loss", "mw_loss", "ndcg_at_k", "negative_penalty_weights", "nt_xent",
           "p2c_loss", "pld_loss", "pld_probabilities", "pld_select", "preference_targets", "progressive_skip",
           "ranklist_loss", "ranknet_loss", "roc_auc", "tolerance", "trajectory_loss", "uniformity", "unpg_loss"]
