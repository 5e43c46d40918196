"""Training a searched cell from scratch: the evaluation networks, their training loop and the
saved model (the multi-process context is ``sgl_betty.runtime``'s)."""

from sgl_betty.evaluation.networks import (
    AuxiliaryHeadCIFAR,
    AuxiliaryHeadImageNet,
    EvalCell,
    NetworkCIFAR,
    NetworkImageNet,
    drop_path,
)
from sgl_betty.evaluation.saved_model import (
    NetworkSpec,
    load_trained_network,
    trained_network_payload,
)
from sgl_betty.evaluation.trainer import (
    LR_SCHEDULES,
    EpochResult,
    EvalTrainer,
    TestResult,
    TrainingSettings,
)

__all__ = [
    "LR_SCHEDULES",
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "EpochResult",
    "EvalCell",
    "EvalTrainer",
    "NetworkCIFAR",
    "NetworkImageNet",
    "NetworkSpec",
    "TestResult",
    "TrainingSettings",
    "drop_path",
    "load_trained_network",
    "trained_network_payload",
]
