"""Forward hooks that record a module's outputs (or an input) during a step."""
from typing import List, Optional

from torch import Tensor, nn


class Recorder:
    """Record what a module produces while recording is on.

    A module called several times in a step (a detection head's cls conv,
    once per FPN level) yields one record per call, in call order; each
    record is the module's output as it is (a tensor, or a tuple of FPN
    levels). Records are dropped when recording stops, so nothing is kept
    between steps.

    Args:
        module (nn.Module): The module to hook.
        input_index (int, optional): Record this positional input instead of
            the output (e.g. the RoIs passed to a RoI extractor).
    """

    def __init__(self, module: nn.Module,
                 input_index: Optional[int] = None) -> None:
        self.records: List[Tensor] = []
        self.active = False
        self.input_index = input_index
        if input_index is None:
            self.handle = module.register_forward_hook(self._on_output)
        else:
            self.handle = module.register_forward_pre_hook(self._on_input)

    def _on_output(self, module: nn.Module, args: tuple, output) -> None:
        if self.active:
            self.records.append(output)

    def _on_input(self, module: nn.Module, args: tuple) -> None:
        if self.active:
            self.records.append(args[self.input_index])

    def start(self) -> None:
        self.records = []
        self.active = True

    def stop(self) -> None:
        self.active = False
        self.records = []
