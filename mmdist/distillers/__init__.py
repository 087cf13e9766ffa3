from .adapters import HeadsForward, RoIBoxForward, TeacherPlan
from .connectors import ConvConnector
from .distiller import Distiller
from .fast_form import TeacherForm
from .pixels import InputRenormaliser, pixel_map
from .teacher import (build_frozen_teacher, load_teacher_config,
                      make_fast_teacher)
from .terms import DistillTerm

__all__ = [
    'Distiller', 'DistillTerm', 'HeadsForward', 'RoIBoxForward', 'TeacherPlan',
    'ConvConnector', 'InputRenormaliser', 'pixel_map', 'build_frozen_teacher',
    'load_teacher_config', 'make_fast_teacher', 'TeacherForm'
]
