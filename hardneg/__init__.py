"""hardneg: hard-negative mining for dense retrievers. The Python API (``mining_jobs.api``)::

    import hardneg
    result = hardneg.mine("scifact", split="train", out="runs/mine")
    result.ntuple  # datasets.Dataset: query, positive, negative_1..negative_5
"""

from mining_jobs import __version__
from mining_jobs.api import EvalResult, LoopResult, MineResult, TrainResult, evaluate, iterate, mine, train
from mining_jobs.settings import ConfigError

__all__ = ["mine", "train", "evaluate", "iterate", "MineResult", "TrainResult", "EvalResult", "LoopResult",
           "ConfigError", "__version__"]
