"""Trainable connectors: map the student's features into the teacher's space
before a feature loss compares them."""
from torch import Tensor, nn

from mmdist.registry import MODELS


@MODELS.register_module()
class ConvConnector(nn.Module):
    """A ``kernel_size`` convolution with bias, one per feature level or one
    shared by all (no normalisation, PyTorch's default initialisation: the
    DIST authors' feature-mimicking connector is ``Conv2d(256, 256, 1)`` per
    FPN level).

    Args:
        in_channels (int): Channels of the student's features.
        out_channels (int): Channels of the teacher's features.
        num_levels (int): Convolutions, one per level; 1 shares one
            convolution across every level. Defaults to 1.
        kernel_size (int): Defaults to 1.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 num_levels: int = 1,
                 kernel_size: int = 1) -> None:
        super().__init__()
        if min(in_channels, out_channels, num_levels, kernel_size) <= 0:
            raise ValueError('ConvConnector sizes must be positive, got '
                             f'in_channels={in_channels}, out_channels='
                             f'{out_channels}, num_levels={num_levels}, '
                             f'kernel_size={kernel_size}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.convs = nn.ModuleList(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=kernel_size // 2,
                bias=True) for _ in range(num_levels))

    @property
    def num_levels(self) -> int:
        return len(self.convs)

    def forward(self, feature: Tensor, level: int = 0) -> Tensor:
        """Map one level ``(N, in_channels, H, W)`` of student features."""
        conv = self.convs[0 if self.num_levels == 1 else level]
        return conv(feature)


def check_connector_levels(connector: nn.Module, levels: int,
                           term: str) -> None:
    """Refuse a per-level connector whose level count is not the number of
    levels its term's modules give: an unused level's convolution never
    gets a gradient (and DDP stops at the second iteration), a missing one
    has nothing to map its level with.

    Args:
        connector (nn.Module): The term's connector; one without
            ``num_levels``, or with 1 (shared by every level), passes.
        levels (int): The levels the student and teacher modules give.
        term (str): The term, with both its modules, for the error.

    Raises:
        ValueError: Naming the term's modules and both counts.
    """
    own = getattr(connector, 'num_levels', 1)
    if own > 1 and own != levels:
        raise ValueError(
            f'{term} give {levels} levels, but its connector has {own} '
            f'(num_levels={own}); set num_levels={levels}, or 1 to share one '
            'convolution across the levels')
