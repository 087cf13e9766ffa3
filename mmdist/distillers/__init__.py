from .adapters import HeadsForward, RoIBoxForward
from .distiller import DistillTerm, Distiller
from .teacher import InputRenormaliser, build_frozen_teacher

__all__ = [
    'Distiller', 'DistillTerm', 'HeadsForward', 'RoIBoxForward',
    'InputRenormaliser', 'build_frozen_teacher'
]
