"""The student's weights inside distillation checkpoints."""
import copy
from typing import Dict

from mmengine.registry import MODELS
from mmengine.runner.checkpoint import _load_checkpoint, load_state_dict

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


def build_distiller_with_student(model_cfg: dict, checkpoint: str):
    """Build a distiller and load a student checkpoint into its student.

    Args:
        model_cfg (dict): The distiller's model config.
        checkpoint (str): A distillation checkpoint (``student.*`` keys) or a
            plain student checkpoint, e.g. of the student trained alone.

    Returns:
        The distiller, student weights loaded strictly.
    """
    model = MODELS.build(copy.deepcopy(model_cfg))
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    load_state_dict(model.student,
                    student_state_dict(ckpt.get('state_dict', ckpt)),
                    strict=True)
    return model
