"""What the teacher computes for each kind of distilled head.

The student always runs its own ``loss()``. The teacher runs only what its
distilled modules need, forward only and without losses, target assignment
or post-processing:

- :class:`HeadsForward` -- dense detection heads (RetinaNet, FCOS, ATSS,
  GFL), segmentation decode/auxiliary heads and classifier heads: backbone,
  neck, then each distilled head on the features.
- :class:`RoIBoxForward` -- two-stage box classifiers: backbone, neck, RoI
  feature extraction and one box head, on the *student's* sampled RoIs (no
  RPN, sampler, losses or mask head), so both logit matrices describe the
  same boxes. For a cascade teacher the stage is the index in the teacher
  module path (``roi_head.bbox_head.0.fc_cls`` -> first stage).
"""
import re
from typing import List, Optional

from torch import Tensor, nn

from mmdist.utils import get_module
from .recorder import Recorder


def _head_name(model: nn.Module, path: str) -> str:
    """The top-level head that contains ``path`` (``decode_head``,
    ``auxiliary_head.1`` for a list of heads, ``bbox_head``...)."""
    parts = path.split('.')
    head = getattr(model, parts[0])
    if isinstance(head, nn.ModuleList) and len(parts) > 1:
        return '.'.join(parts[:2])
    return parts[0]


class HeadsForward:
    """Teacher = ``extract_feat`` + the heads that hold distilled modules.

    Args:
        teacher (nn.Module): The frozen teacher (an OpenMMLab detector,
            segmentor or classifier with ``extract_feat``).
        teacher_paths (list[str]): Dotted paths of the distilled teacher
            modules.
    """

    def __init__(self, teacher: nn.Module, teacher_paths: List[str]) -> None:
        if not hasattr(teacher, 'extract_feat'):
            raise TypeError(f'teacher {type(teacher).__name__} has no '
                            'extract_feat(); cannot run its heads alone')
        names = []
        for path in teacher_paths:
            name = _head_name(teacher, path)
            if name not in names:
                names.append(name)
        self.heads = [get_module(teacher, n, 'teacher') for n in names]

    def attach(self, student: nn.Module) -> List[Recorder]:
        """Nothing to capture from the student."""
        return []

    def __call__(self, teacher: nn.Module, inputs: Tensor,
                 data_samples: Optional[list]) -> None:
        feats = teacher.extract_feat(inputs)
        for head in self.heads:
            head(feats)


class RoIBoxForward:
    """Teacher box classifier on the student's sampled RoIs.

    Args:
        teacher (nn.Module): The frozen two-stage teacher.
        teacher_path (str): Distilled teacher module, inside
            ``roi_head.bbox_head`` (``roi_head.bbox_head.<stage>`` for a
            cascade).
        student_path (str): Distilled student module, inside its
            ``roi_head.bbox_head``; the student's RoIs are read from the
            matching ``bbox_roi_extractor``.
    """

    _PATH = re.compile(r'^roi_head\.bbox_head(?:\.(\d+))?(?:\.|$)')

    def __init__(self, teacher: nn.Module, teacher_path: str,
                 student_path: str) -> None:
        t_match = self._PATH.match(teacher_path)
        s_match = self._PATH.match(student_path)
        if t_match is None or s_match is None:
            raise ValueError(
                'RoI distillation needs modules inside roi_head.bbox_head, '
                f'got student {student_path!r} and teacher {teacher_path!r}')
        self.stage = t_match.group(1)
        roi_head = teacher.roi_head
        self.extractor = roi_head.bbox_roi_extractor
        self.box_head = roi_head.bbox_head
        if isinstance(self.box_head, nn.ModuleList):
            stage = int(self.stage or 0)
            self.extractor = self.extractor[stage]
            self.box_head = self.box_head[stage]
        self.shared_head = (
            roi_head.shared_head if getattr(roi_head, 'with_shared_head',
                                            False) else None)
        self.student_extractor = 'roi_head.bbox_roi_extractor' + (
            f'.{s_match.group(1)}' if s_match.group(1) else '')
        self.student_rois: Optional[Recorder] = None

    def attach(self, student: nn.Module) -> List[Recorder]:
        """Record the RoIs the student's box branch extracts features for."""
        extractor = get_module(student, self.student_extractor, 'student')
        self.student_rois = Recorder(extractor, input_index=1)
        return [self.student_rois]

    def __call__(self, teacher: nn.Module, inputs: Tensor,
                 data_samples: Optional[list]) -> None:
        if not self.student_rois.records:
            raise RuntimeError(
                f'the student never called {self.student_extractor} in this '
                'step, so there are no RoIs for the teacher to score')
        # A mask branch sharing the extractor runs after the box branch: the
        # first call of the step holds the box RoIs.
        rois = self.student_rois.records[0].detach()
        feats = teacher.extract_feat(inputs)
        roi_feats = self.extractor(feats[:self.extractor.num_inputs], rois)
        if self.shared_head is not None:
            roi_feats = self.shared_head(roi_feats)
        self.box_head(roi_feats)
