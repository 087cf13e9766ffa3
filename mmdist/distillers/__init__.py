from .adapters import HeadsForward, RoIBoxForward
from .distiller import DistillTerm, Distiller
from .pixels import InputRenormaliser, pixel_map
from .teacher import build_frozen_teacher, load_teacher_config

__all__ = [
    'Distiller', 'DistillTerm', 'HeadsForward', 'RoIBoxForward',
    'InputRenormaliser', 'pixel_map', 'build_frozen_teacher',
    'load_teacher_config'
]
