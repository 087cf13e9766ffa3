from .build import (build_model, is_distiller, model_config,
                    resolve_teacher_paths, student_config)
from .checkpoint import (NotACheckpointError, UnsafeCheckpointError,
                         install_safe_checkpoint_loading)
from .config import register_config_package
from .modules import get_module

__all__ = [
    'NotACheckpointError', 'UnsafeCheckpointError',
    'install_safe_checkpoint_loading', 'register_config_package', 'get_module',
    'build_model', 'is_distiller', 'model_config', 'resolve_teacher_paths',
    'student_config'
]
