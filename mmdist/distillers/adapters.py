"""What the teacher computes for a set of distillation terms.

The student always runs its own ``loss()``. The teacher runs, once per step,
only what its distilled modules need, forward only and without losses,
target assignment or post-processing. :class:`TeacherPlan` reads that from
the terms' teacher paths:

- ``backbone.*`` / ``neck.*`` (feature mimicking): ``extract_feat`` alone;
- dense detection heads (RetinaNet, FCOS, ATSS, GFL), segmentation
  decode/auxiliary heads and classifier heads: each such head on the
  features (:class:`HeadsForward`);
- two-stage box classifiers (``roi_head.bbox_head...``): RoI feature
  extraction and one box head on the *student's* sampled RoIs (no RPN,
  sampler, losses or mask head), so both logit matrices describe the same
  boxes (:class:`RoIBoxForward`). For a cascade teacher the stage is the
  index in the teacher path (``roi_head.bbox_head.0.fc_cls`` -> first stage).

Any mix of these runs on one ``extract_feat``.
"""
import re
from typing import List, Optional, Sequence, Tuple

from torch import Tensor, nn

from mmdist.utils import get_module
from .recorder import Recorder

_FEATURE_MODULES = ('backbone', 'neck')


def _head_name(model: nn.Module, path: str) -> str:
    """The top-level head that contains ``path`` (``decode_head``,
    ``auxiliary_head.1`` for a list of heads, ``bbox_head``...)."""
    parts = path.split('.')
    head = getattr(model, parts[0])
    if isinstance(head, nn.ModuleList) and len(parts) > 1:
        return '.'.join(parts[:2])
    return parts[0]


class HeadsForward:
    """The heads that hold distilled modules, run on extracted features.

    Args:
        model (nn.Module): An OpenMMLab detector, segmentor or classifier.
        paths (list[str]): Dotted paths of distilled modules inside heads.
        owner (str): How to call the model in errors. Defaults to
            ``'teacher'``.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str],
                 owner: str = 'teacher') -> None:
        names: List[str] = []
        for path in paths:
            name = _head_name(model, path)
            if name not in names:
                names.append(name)
        self.heads = [get_module(model, n, owner) for n in names]

    def __call__(self, feats) -> None:
        for head in self.heads:
            head(feats)


class RoIBoxForward:
    """One box head of the teacher on the student's sampled RoIs.

    Args:
        teacher (nn.Module): The frozen two-stage teacher.
        teacher_path (str): Distilled teacher module, inside
            ``roi_head.bbox_head`` (``roi_head.bbox_head.<stage>`` for a
            cascade).
        student_path (str): Distilled student module, inside its
            ``roi_head.bbox_head``; the student's RoIs are read from the
            matching ``bbox_roi_extractor``.
    """

    PATH = re.compile(r'^roi_head\.bbox_head(?:\.(\d+))?(?:\.|$)')

    def __init__(self, teacher: nn.Module, teacher_path: str,
                 student_path: str) -> None:
        t_match = self.PATH.match(teacher_path)
        s_match = self.PATH.match(student_path)
        if t_match is None or s_match is None:
            raise ValueError(
                'RoI distillation needs modules inside roi_head.bbox_head, '
                f'got student {student_path!r} and teacher {teacher_path!r}')
        roi_head = teacher.roi_head
        self.extractor = roi_head.bbox_roi_extractor
        self.box_head = roi_head.bbox_head
        if isinstance(self.box_head, nn.ModuleList):
            stage = int(t_match.group(1) or 0)
            self.extractor = self.extractor[stage]
            self.box_head = self.box_head[stage]
        self.shared_head = (
            roi_head.shared_head if getattr(roi_head, 'with_shared_head',
                                            False) else None)
        self.student_extractor = 'roi_head.bbox_roi_extractor' + (
            f'.{s_match.group(1)}' if s_match.group(1) else '')
        self.key: Tuple[int, str] = (id(self.box_head),
                                     self.student_extractor)
        self.student_rois: Optional[Recorder] = None

    def attach(self, student: nn.Module) -> Recorder:
        """Record the RoIs the student's box branch extracts features for."""
        extractor = get_module(student, self.student_extractor, 'student')
        self.student_rois = Recorder(extractor, input_index=1)
        return self.student_rois

    def __call__(self, feats) -> None:
        if not self.student_rois.records:
            raise RuntimeError(
                f'the student never called {self.student_extractor} in this '
                'step, so there are no RoIs for the teacher to score')
        # A mask branch sharing the extractor runs after the box branch: the
        # first call of the step holds the box RoIs.
        rois = self.student_rois.records[0].detach()
        roi_feats = self.extractor(feats[:self.extractor.num_inputs], rois)
        if self.shared_head is not None:
            roi_feats = self.shared_head(roi_feats)
        self.box_head(roi_feats)


class TeacherPlan:
    """The teacher's forward for a set of terms: one ``extract_feat``, then
    the heads and RoI box heads the terms need.

    Args:
        teacher (nn.Module): The frozen teacher (an OpenMMLab model with
            ``extract_feat``).
        pairs (list[tuple[str, str]]): ``(teacher_path, student_path)`` of
            every term.
    """

    def __init__(self, teacher: nn.Module,
                 pairs: Sequence[Tuple[str, str]]) -> None:
        if not hasattr(teacher, 'extract_feat'):
            raise TypeError(f'teacher {type(teacher).__name__} has no '
                            'extract_feat(); cannot run its heads alone')
        head_paths: List[str] = []
        self.roi_forwards: List[RoIBoxForward] = []
        for teacher_path, student_path in pairs:
            if teacher_path.split('.')[0] in _FEATURE_MODULES:
                continue  # extract_feat runs it
            if teacher_path.startswith('roi_head.'):
                forward = RoIBoxForward(teacher, teacher_path, student_path)
                if all(f.key != forward.key for f in self.roi_forwards):
                    self.roi_forwards.append(forward)
            else:
                head_paths.append(teacher_path)
        self.heads = HeadsForward(teacher, head_paths)
        # Run the whole teacher after the student (the order of mmdist
        # <= 0.1); kept for benchmark comparisons, see Distiller.loss.
        self.student_first = False

    def attach(self, student: nn.Module) -> List[Recorder]:
        """Recorders the plan needs on the student (its sampled RoIs)."""
        return [forward.attach(student) for forward in self.roi_forwards]

    def features(self, teacher: nn.Module, inputs: Tensor):
        """``extract_feat`` and the distilled heads; returns the features."""
        feats = teacher.extract_feat(inputs)
        self.heads(feats)
        return feats

    def rois(self, feats) -> None:
        """The box heads on the student's RoIs (after the student ran)."""
        for forward in self.roi_forwards:
            forward(feats)

    def __call__(self, teacher: nn.Module, inputs: Tensor,
                 data_samples: Optional[list]) -> None:
        self.rois(self.features(teacher, inputs))
