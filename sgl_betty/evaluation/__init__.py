"""Training a searched cell from scratch: the evaluation networks, their training loop, the
multi-process context and the saved model."""

from sgl_betty.evaluation.distributed import (
    DistributedContext,
    init_distributed,
    launched_distributed,
    shutdown_distributed,
    weights_checksum,
)
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
    "DistributedContext",
    "EpochResult",
    "EvalCell",
    "EvalTrainer",
    "NetworkCIFAR",
    "NetworkImageNet",
    "NetworkSpec",
    "TestResult",
    "TrainingSettings",
    "drop_path",
    "init_distributed",
    "launched_distributed",
    "load_trained_network",
    "shutdown_distributed",
    "trained_network_payload",
    "weights_checksum",
]
