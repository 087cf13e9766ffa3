"""Record a module's outputs (or an input) during a step."""
from typing import List, Optional

from torch import Tensor, nn


class _RecordingForward:
    """Instance-level ``forward`` that records what the class's ``forward``
    returns, so that direct ``module.forward(...)`` calls are seen too
    (``BaseDecodeHead.loss`` calls ``self.forward``, which bypasses hooks).

    Holds the module and the recorder as attributes (not a closure), so a
    deep copy of the model (an EMA copy) calls its own copy's class
    ``forward`` and records into its own copies of the recorders.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.recorders: List['Recorder'] = []

    def __call__(self, *args, **kwargs):
        output = type(self.module).forward(self.module, *args, **kwargs)
        for recorder in self.recorders:
            if recorder.active:
                recorder.records.append(output)
        return output


class Recorder:
    """Record what a module produces while recording is on.

    A module called several times in a step (a detection head's cls conv,
    once per FPN level) yields one record per call, in call order; each
    record is the module's output as it is (a tensor, or a tuple of FPN
    levels). Records are dropped when recording stops, so nothing is kept
    between steps.

    Args:
        module (nn.Module): The module to record.
        input_index (int, optional): Record this positional input instead of
            the output (e.g. the RoIs passed to a RoI extractor).
        record_forward (bool): Record the module's ``forward()`` calls, also
            those made directly (``self.forward(x)``) rather than through
            ``module(x)``, which forward hooks miss. Used for heads whose
            class logits are the output of ``forward`` itself (Segmenter's
            mask transformer head). Defaults to False (a forward hook).
    """

    def __init__(self,
                 module: nn.Module,
                 input_index: Optional[int] = None,
                 record_forward: bool = False) -> None:
        self.records: List[Tensor] = []
        self.active = False
        self.input_index = input_index
        self.handle = None
        if record_forward:
            if input_index is not None:
                raise ValueError('record_forward records outputs; it cannot '
                                 'be combined with input_index')
            wrapper = module.__dict__.get('forward')
            if not isinstance(wrapper, _RecordingForward):
                wrapper = _RecordingForward(module)
                module.forward = wrapper
            wrapper.recorders.append(self)
        elif input_index is None:
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


class GroupRecords:
    """What a group of shared queries gives in a step: the interface of
    :class:`Recorder` (``records``, ``start``, ``stop``), filled by the group
    rather than by hooks.

    Args:
        capture (object, optional): Keeps the student's inputs of the step
            while recording is on; its ``reset(active)`` runs on start and
            stop.
    """

    def __init__(self, capture=None) -> None:
        self.records: List[Tensor] = []
        self.active = False
        self.capture = capture

    def start(self) -> None:
        self.records = []
        self.active = True
        if self.capture is not None:
            self.capture.reset(True)

    def stop(self) -> None:
        self.records = []
        self.active = False
        if self.capture is not None:
            self.capture.reset(False)
