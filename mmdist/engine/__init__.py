from .checkpoint_hook import CheckpointWriteError, SafeCheckpointHook
from .ddp import CPUCompatibleDDP, cpu_launch_config
from .distill_schedule import DistillWeightHook
from .divergence import DivergenceGuardHook, TrainingDiverged
from .fault_tolerance import FAULT_TOLERANCE_KEY, enable_fault_tolerance
from .loops import ResumableEpochBasedTrainLoop
from .preemption import PREEMPTED_EXIT_CODE, PreemptionHook, TrainingPreempted

__all__ = ['CPUCompatibleDDP', 'cpu_launch_config', 'DistillWeightHook']
__all__ += [
    'SafeCheckpointHook', 'CheckpointWriteError', 'PreemptionHook',
    'PREEMPTED_EXIT_CODE', 'TrainingPreempted', 'ResumableEpochBasedTrainLoop',
    'enable_fault_tolerance', 'FAULT_TOLERANCE_KEY', 'DivergenceGuardHook',
    'TrainingDiverged'
]
