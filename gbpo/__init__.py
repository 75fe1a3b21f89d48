"""GBPO: Group-relative Bounded Policy Optimization for TRL.

``from gbpo import GBPOTrainer, GBPOConfig`` gives the trainer and its config; the maths lives in
:mod:`gbpo.loss`, the TTRL and accuracy rewards in :mod:`gbpo.rewards`, answer grading in
:mod:`gbpo.grading` and the benchmark data in :mod:`gbpo.data`. The trainer classes are imported
lazily so that the pure modules load without TRL's start-up cost.
"""

__version__ = "0.1.0"

__all__ = ["GBPOConfig", "GBPOTrainer"]


def __getattr__(name):
    if name == "GBPOConfig":
        from .config import GBPOConfig

        return GBPOConfig
    if name == "GBPOTrainer":
        from .trainer import GBPOTrainer

        return GBPOTrainer
    raise AttributeError(f"module 'gbpo' has no attribute {name!r}")
