"""The student's weights inside distillation checkpoints."""
from typing import Dict

from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.runner.checkpoint import _load_checkpoint, load_state_dict
from torch import nn

from .build import build_model

STUDENT_PREFIX = 'student.'


def student_state_dict(state: Dict) -> Dict:
    """The ``student.*`` entries of a distiller's state dict, unprefixed.

    A state dict without such keys (a plain model's) is returned as is.
    """
    if not any(k.startswith(STUDENT_PREFIX) for k in state):
        return dict(state)
    return {
        k[len(STUDENT_PREFIX):]: v
        for k, v in state.items() if k.startswith(STUDENT_PREFIX)
    }


def distillation_checkpoint_note(checkpoint: str) -> str:
    """Says that ``checkpoint`` holds a distiller's weights (the student's),
    for error messages about a checkpoint given where one model's weights
    belong.

    Args:
        checkpoint (str): Path or URL of the checkpoint.

    Returns:
        str: One clause, without a full stop.
    """
    return (f"{checkpoint} is a distillation checkpoint (its weights are the "
            f"student's, {STUDENT_PREFIX}*)")


def is_distillation_checkpoint(checkpoint: str) -> bool:
    """Whether a checkpoint holds a distiller's training state (its model
    weights under ``student.``) rather than one model's weights.

    Args:
        checkpoint (str): Path or URL of the checkpoint.

    Returns:
        bool: True for a checkpoint written by training a distiller.
    """
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt)
    return any(k.startswith(STUDENT_PREFIX) for k in state)


def build_distiller_with_student(cfg: Config, checkpoint: str):
    """Build a config's distiller as the Runner would (its top-level
    ``data_preprocessor`` merged in) and load a student checkpoint into its
    student.

    Args:
        cfg (Config): The distillation config.
        checkpoint (str): A distillation checkpoint (``student.*`` keys) or a
            plain student checkpoint, e.g. of the student trained alone.

    Returns:
        The distiller, student weights loaded strictly.
    """
    model = build_model(cfg)
    load_student_weights(model.student, checkpoint)
    return model


def load_student_weights(model: nn.Module, checkpoint: str) -> None:
    """Load the student of a distillation checkpoint (or a plain student
    checkpoint) strictly into a stock student model.

    Args:
        model (nn.Module): The student, possibly wrapped (DDP).
        checkpoint (str): Path or URL of the checkpoint.
    """
    if is_model_wrapper(model):
        model = model.module
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    load_state_dict(
        model, student_state_dict(ckpt.get('state_dict', ckpt)), strict=True)
