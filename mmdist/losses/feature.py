"""Feature mimicking: mean squared error between feature maps."""
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from mmdist.registry import MODELS
from .rows import check_number, check_pair


@MODELS.register_module()
class FeatureMSELoss(nn.Module):
    """``loss_weight * mean((student - teacher)^2)`` over all elements of one
    feature map (one FPN level), computed in float32.

    A distillation term on a module with several outputs (an FPN ``neck``)
    calls it once per level and sums the levels, as the DIST authors'
    feature mimicking did.

    Args:
        loss_weight (float): Weight of the loss. Defaults to 1.0.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = check_number('FeatureMSELoss', 'loss_weight',
                                        loss_weight)

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        weight: Optional[Tensor] = None,
        return_parts: bool = False
    ) -> Union[Tensor, Tuple[Tensor, Dict[str, Tensor]]]:
        """Compute the loss.

        Args:
            student (Tensor): Student features (after its connector), any
                shape.
            teacher (Tensor): Teacher features of the same shape (no
                gradient).
            weight (Tensor, optional): Not supported (must be None).
            return_parts (bool): Also return an empty dict of parts, as
                the logits losses do.

        Returns:
            Tensor | tuple[Tensor, dict]: The float32 scalar loss.
        """
        check_pair(student, teacher)
        if weight is not None:
            raise ValueError('FeatureMSELoss takes no row weights')
        dtype = torch.promote_types(student.dtype, torch.float32)
        loss = self.loss_weight * torch.mean(
            (student.to(dtype) - teacher.detach().to(dtype)).square())
        if return_parts:
            return loss, {}
        return loss

    def extra_repr(self) -> str:
        return f'loss_weight={self.loss_weight}'
