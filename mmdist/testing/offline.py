"""Switch off every download in a config (tests and demos run offline)."""
from typing import Any


def strip_pretrained(cfg: Any) -> Any:
    """Remove pretrained-weight loading from a config, in place.

    Drops ``init_cfg`` entries of type ``Pretrained`` and ``pretrained``
    keys at any depth, and the distiller's ``teacher_ckpt`` (the teacher is
    then randomly initialised).

    Args:
        cfg: A config, dict or list.

    Returns:
        The same object.
    """
    if isinstance(cfg, dict):
        if cfg.get('type') in ('mmdist.Distiller', 'Distiller'):
            cfg['teacher_ckpt'] = None
        if 'pretrained' in cfg:
            cfg['pretrained'] = None
        init_cfg = cfg.get('init_cfg')
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            cfg['init_cfg'] = None
        elif isinstance(init_cfg, list):
            cfg['init_cfg'] = [
                c for c in init_cfg
                if not (isinstance(c, dict) and c.get('type') == 'Pretrained')
            ] or None
        for value in cfg.values():
            strip_pretrained(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            strip_pretrained(value)
    return cfg
