"""Fail before training when the work_dir cannot be written."""
import os
import tempfile


def check_work_dir(work_dir: str) -> None:
    """Create ``work_dir`` and check it is writable.

    Raises:
        PermissionError: Naming the directory, when it cannot be created or
            written to.
    """
    try:
        os.makedirs(work_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=work_dir):
            pass
    except OSError as error:
        raise PermissionError(
            f'work_dir {work_dir!r} is not writable ({error}); pass a '
            'writable --work-dir') from None
