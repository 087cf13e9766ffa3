"""Look up submodules by dotted path, with helpful errors."""
import difflib

from torch import nn


def get_module(model: nn.Module, path: str, owner: str = 'model') -> nn.Module:
    """Return ``model``'s submodule at ``path`` (``bbox_head.retina_cls``).

    Args:
        model (nn.Module): The model to search.
        path (str): Dotted path as in ``model.named_modules()``.
        owner (str): How to call the model in the error (``student``...).

    Returns:
        nn.Module: The submodule.

    Raises:
        KeyError: If no submodule has that path; the message lists the
            closest valid paths.
    """
    modules = dict(model.named_modules())
    if path in modules and path:
        return modules[path]
    close = difflib.get_close_matches(
        path, [p for p in modules if p], n=5, cutoff=0.5)
    hint = ', '.join(close) if close else 'none similar'
    raise KeyError(f'{owner} ({type(model).__name__}) has no module '
                   f'{path!r}; closest valid paths: {hint}')
