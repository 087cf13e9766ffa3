"""Print the distillation terms a config expands to, as pasteable config.

Usage:
    python tools/misc/print_terms.py CONFIG [--head SLOT]
        [--loss-type mmdist.DISTLoss] [--cfg-options ...]

CONFIG is a file or a package config (``mmdet::rtmdet/<name>.py``): a
distillation config (its ``distill_terms``, short or explicit,
are expanded for its student and teacher) or any MMDet/MMSeg/MMPretrain
model config (the model is then both student and teacher and the short form
``dict(head=SLOT, loss=dict(type=LOSS_TYPE))`` is expanded: what the model
would get if it were distilled from a teacher of its own family).

The models are built with random weights and nothing is downloaded; the
output is the ``distill_terms=[...]`` block to paste into a config and edit,
after comment lines saying what the short form left out and, for a teacher
trained on another label set, which teacher classes each student class takes
and which are dropped (see ``mmdist.distillers.class_map``).
"""
import argparse
import copy

from mmengine.config import Config, DictAction
from mmengine.registry import MODELS, DefaultScope

import mmdist  # noqa: F401
from mmdist.distillers import load_teacher_config
from mmdist.distillers.class_map import (ClassNames, config_classes,
                                         teacher_classes)
from mmdist.distillers.expand import expand_terms, format_terms
from mmdist.testing import strip_pretrained
from mmdist.utils import build_model, is_distiller, student_config
from mmdist.utils.build import resolve_teacher_paths


def class_names(cfg: Config, teacher) -> ClassNames:
    """The class names the distiller would see (its ``student_classes``
    and ``teacher_classes``, else the configs' data and the teacher's
    checkpoint meta)."""
    if not is_distiller(cfg.model):
        names = config_classes(cfg)
        return ClassNames(names, names)
    given = cfg.model.get('teacher_classes')
    return ClassNames(
        cfg.model.get('student_classes') or config_classes(cfg), given
        or (lambda: teacher_classes(cfg.model.teacher, teacher)))


def build_pair(cfg: Config):
    """Student and teacher of a config, random weights, offline."""
    cfg = copy.deepcopy(cfg)
    strip_pretrained(cfg.model)
    if not is_distiller(cfg.model):
        model = build_model(cfg)
        return model, model, None
    student = build_model(student_config(cfg))
    teacher_cfg = load_teacher_config(cfg.model.teacher,
                                      cfg.get('data_preprocessor'))
    strip_pretrained(teacher_cfg)
    scope = teacher_cfg.pop('_scope_', None) or cfg.get('default_scope')
    with DefaultScope.overwrite_default_scope(scope):
        teacher = MODELS.build(teacher_cfg)
    return student, teacher, cfg.model.get('distill_terms')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='distillation or model config')
    parser.add_argument(
        '--head',
        default=None,
        help='slot for a model config (bbox_head, roi_head, '
        'decode_head, auxiliary_head, head); default: all')
    parser.add_argument('--loss-type', default='mmdist.DISTLoss')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()
    path = args.config
    if '::' in path:  # a package config, e.g. mmdet::rtmdet/<name>.py
        path, _ = Config._get_cfg_path(path, '')
    cfg = Config.fromfile(path)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    resolve_teacher_paths(cfg, path)
    student, teacher, terms = build_pair(cfg)
    if not is_distiller(cfg.model):
        short = dict(loss=dict(type=args.loss_type))
        if args.head:
            short['head'] = args.head
        terms = [short]
    notes = []
    terms = expand_terms(
        terms,
        student,
        teacher,
        log=False,
        notes=notes,
        class_names=class_names(cfg, teacher))
    for note in notes:
        print(f'# {note}')
    print(format_terms(terms))


if __name__ == '__main__':
    main()
