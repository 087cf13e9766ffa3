"""What the teacher computes for a set of distillation terms.

The student always runs its own ``loss()``. The teacher runs, once per step,
only what its distilled modules need, forward only and without losses,
target assignment or post-processing. :class:`TeacherPlan` reads that from
the terms' teacher paths:

- ``backbone.*`` / ``neck.*`` (feature mimicking): ``extract_feat`` alone;
- dense detection heads (RetinaNet, FCOS, ATSS, GFL...), segmentation
  decode/auxiliary heads and classifier heads: each such head on the
  features (:class:`HeadsForward`); a cascade decode head (OCRNet) stage
  by stage, each fed the previous stage's output (:class:`CascadeForward`);
- two-stage box classifiers (``roi_head.bbox_head...``): RoI feature
  extraction and one box head on the *student's* sampled RoIs (the
  teacher RoI head's own ``_bbox_forward``; no RPN, sampler, losses or mask
  head), so both logit matrices describe the same boxes
  (:class:`RoIBoxForward`). For a cascade teacher the stage is the
  index in the teacher path (``roi_head.bbox_head.0.fc_cls`` -> first stage).

- DETR-family heads (terms with ``queries``): the teacher's encoder and
  its decoder over the shared distillation queries only
  (:mod:`mmdist.distillers.queries`).

Any mix of these runs on one ``extract_feat``.
"""
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from mmdist.utils import get_module
from .families import family_of
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


class CascadeForward:
    """The stages of a cascade decode head, up to the last one a term needs,
    each stage the head family marks ``prev_output`` (OCRNet's ``OCRHead``)
    fed the previous stage's output, as ``CascadeEncoderDecoder`` does.

    Args:
        stages (nn.ModuleList): The cascade (``decode_head``).
        last (int): Index of the last stage to run.
    """

    def __init__(self, stages: nn.ModuleList, last: int) -> None:
        self.stages = [stages[i] for i in range(last + 1)]
        self.prev_output = [
            bool(getattr(family_of(stage), 'prev_output', False))
            for stage in self.stages
        ]

    def __call__(self, feats) -> None:
        output = None
        for stage, takes_prev in zip(self.stages, self.prev_output):
            output = stage(feats, output) if takes_prev else stage(feats)


class HeadsForward:
    """The heads that hold distilled modules, run on extracted features.

    A head is called as ``head(features)``, except the stages of a cascade
    (a list of heads in which the family table marks a stage as taking the
    previous stage's output): those run in order from the first, see
    :class:`CascadeForward`.

    Args:
        model (nn.Module): An OpenMMLab detector, segmentor or classifier.
        paths (list[str]): Dotted paths of distilled modules inside heads.
        owner (str): How to call the model in errors. Defaults to
            ``'teacher'``.
    """

    def __init__(self,
                 model: nn.Module,
                 paths: Sequence[str],
                 owner: str = 'teacher') -> None:
        names: List[str] = []
        for path in paths:
            name = _head_name(model, path)
            if name not in names:
                names.append(name)
        cascades: Dict[str, int] = {}
        self.heads: List[Callable] = []
        for name in names:
            parts = name.split('.')
            container = getattr(model, parts[0])
            if len(parts) == 2 and _is_cascade(container):
                cascades[parts[0]] = max(
                    cascades.get(parts[0], 0), int(parts[1]))
            else:
                self.heads.append(get_module(model, name, owner))
        for name, last in cascades.items():
            self.heads.append(CascadeForward(getattr(model, name), last))

    def __call__(self, feats) -> None:
        for head in self.heads:
            head(feats)


def _is_cascade(container: nn.Module) -> bool:
    """A list of heads whose later stages take the previous one's output."""
    return isinstance(container, nn.ModuleList) and any(
        getattr(family_of(stage), 'prev_output', False) for stage in container)


class RoIBoxForward:
    """One box head of the teacher on the student's sampled RoIs.

    Runs the teacher RoI head's own ``_bbox_forward`` (RoI extraction,
    shared head, box head; per stage for a cascade), so that box heads with
    their own inputs (Double-Head's separate classification and regression
    RoI features, HTC's semantic fusion) run as in the teacher's model.

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
        self.roi_head = teacher.roi_head
        self.stage: Optional[int] = None
        if isinstance(self.roi_head.bbox_head, nn.ModuleList):
            self.stage = int(t_match.group(1) or 0)
        self.student_extractor = 'roi_head.bbox_roi_extractor' + (
            f'.{s_match.group(1)}' if s_match.group(1) else '')
        self.key: Tuple = (id(self.roi_head), self.stage,
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
        # A mask branch sharing the extractor runs after the box branch
        # (and Double-Head calls it twice on the same RoIs): the first call
        # of the step holds the box RoIs.
        rois = self.student_rois.records[0].detach()
        if self.stage is None:
            self.roi_head._bbox_forward(feats, rois)
            return
        kwargs = {}
        if getattr(self.roi_head, 'with_semantic', False):
            # HTC fuses its semantic head's features into the box branch.
            kwargs['semantic_feat'] = self.roi_head.semantic_head(feats)[1]
        self.roi_head._bbox_forward(self.stage, feats, rois, **kwargs)


class TeacherPlan:
    """The teacher's forward for a set of terms: one ``extract_feat``, then
    the heads and RoI box heads the terms need.

    Args:
        teacher (nn.Module): The frozen teacher (an OpenMMLab model with
            ``extract_feat``).
        pairs (list[tuple[str, str]]): ``(teacher_path, student_path)`` of
            every term.
        queries (list[QueryDistillTerm], optional): DETR-family terms,
            whose group the teacher decodes after its encoder (see
            :mod:`mmdist.distillers.queries`).
    """

    def __init__(self,
                 teacher: nn.Module,
                 pairs: Sequence[Tuple[str, str]],
                 queries: Optional[Sequence] = None) -> None:
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
        # DETR-family terms: the encoder and the decoder over their shared
        # distillation queries (mmdist.distillers.queries).
        self.queries = list(queries or ())
        # Run the whole teacher after the student (the order of mmdist
        # <= 0.1); kept for benchmark comparisons, see Distiller.loss.
        self.student_first = False

    def attach(self, student: nn.Module) -> List[Recorder]:
        """Recorders the plan needs on the student (its sampled RoIs)."""
        return [forward.attach(student) for forward in self.roi_forwards]

    def features(self,
                 teacher: nn.Module,
                 inputs: Tensor,
                 data_samples: Optional[list] = None):
        """``extract_feat``, the distilled heads and the decoder over the
        shared distillation queries; returns the features."""
        feats = teacher.extract_feat(inputs)
        self.heads(feats)
        for term in self.queries:
            if term.group is not None:  # None before the terms attach
                term.group.teacher_step(teacher, feats, data_samples)
        return feats

    def rois(self, feats) -> None:
        """The box heads on the student's RoIs (after the student ran)."""
        for forward in self.roi_forwards:
            forward(feats)

    def __call__(self, teacher: nn.Module, inputs: Tensor,
                 data_samples: Optional[list]) -> None:
        self.rois(self.features(teacher, inputs, data_samples))
