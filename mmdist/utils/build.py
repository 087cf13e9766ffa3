"""Build a config's model the way MMEngine's Runner builds it."""
import copy
import os.path as osp

from mmengine.config import Config, ConfigDict
from mmengine.registry import MODELS, DefaultScope
from torch import nn

DISTILLER_TYPES = ('Distiller', 'mmdist.Distiller')


def model_config(cfg: Config) -> ConfigDict:
    """``cfg.model`` with the config's top-level ``data_preprocessor``
    merged in, as ``Runner.__init__`` does (the model's own wins).

    MMPretrain declares its normalisation only at the top level, so a model
    built from ``cfg.model`` alone would not normalise its input.

    Args:
        cfg (Config): A full config.

    Returns:
        ConfigDict: A copy of the model dict.
    """
    model = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') is not None:
        model.setdefault('data_preprocessor',
                         copy.deepcopy(cfg.data_preprocessor))
    if is_distiller(model):
        # The student's class names, from the config's data (class_map).
        from mmdist.distillers.class_map import fill_student_classes
        fill_student_classes(dict(model=model, **_data_keys(cfg)))
    return model


def _data_keys(cfg: Config) -> dict:
    keys = ('metainfo', 'default_scope', 'train_dataloader', 'val_dataloader',
            'test_dataloader')
    return {k: cfg.get(k) for k in keys if cfg.get(k) is not None}


def build_model(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` as the Runner would (see :func:`model_config`),
    under the config's ``default_scope``.

    Args:
        cfg (Config): The full config.

    Returns:
        nn.Module: The model, not initialised (call ``init_weights()``).
    """
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        return MODELS.build(model_config(cfg))


def is_distiller(model: dict) -> bool:
    """Whether a model dict builds an mmdist distiller."""
    return isinstance(model, dict) and model.get('type') in DISTILLER_TYPES


def student_config(cfg: Config) -> Config:
    """The config a distillation config trains its student with: the same
    data, loops and evaluators, with the student (and the normalisation the
    Runner would give it) as the model.

    Args:
        cfg (Config): A distillation config.

    Returns:
        Config: A copy with ``model`` replaced by the student's dict.
    """
    if not is_distiller(cfg.model):
        raise ValueError('not a distillation config: model type is '
                         f'{cfg.model.get("type")!r}')
    out = copy.deepcopy(cfg)
    distiller = model_config(cfg)
    student = distiller.student
    if student.get('data_preprocessor') is None and distiller.get(
            'data_preprocessor') is not None:
        # What the Distiller gives its student (see Distiller.__init__).
        student['data_preprocessor'] = distiller.data_preprocessor
    out.model = student
    return out


def resolve_teacher_paths(cfg: Config, config_path: str) -> None:
    """Make a relative ``teacher`` config path and a relative local
    ``teacher_ckpt`` absolute, from the folder of the config that names
    them, as ``_base_`` paths resolve; in place.

    MMEngine does not record which file set a key, so the folder of the
    config the tools were given is used (a path that exists there wins over
    one in the working directory). The absolute path is what the Runner
    saves in the work dir's config copy, which therefore still resolves.
    A path found in neither place is left as it is: building the teacher
    then fails with an error that names it. The student's class names are
    recorded too (``model.student_classes``, see
    :func:`mmdist.distillers.class_map.fill_student_classes`).

    Args:
        cfg (Config): The loaded config.
        config_path (str): The file it was loaded from.
    """
    model = cfg.get('model')
    if not is_distiller(model):
        return
    for key in ('teacher', 'teacher_ckpt'):
        path = model.get(key)
        # Package (mmdet::) and remote (https://) paths resolve elsewhere.
        if (not isinstance(path, str) or '::' in path or '://' in path
                or osp.isabs(path)):
            continue
        beside_config = osp.join(osp.dirname(osp.abspath(config_path)), path)
        if osp.isfile(beside_config):
            model[key] = osp.normpath(beside_config)
        elif osp.isfile(path):
            model[key] = osp.abspath(path)
    from mmdist.distillers.class_map import fill_student_classes
    fill_student_classes(cfg)
