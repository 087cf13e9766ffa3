"""Sphinx configuration of mmdist's English documentation.

Built with MyST (Markdown) as OpenMMLab's projects build theirs;
``tests/test_docs.py`` runs ``sphinx-build -W`` on this folder, so every
warning (a broken cross-reference, a page outside the toctree) fails the
tests. Only the built-in ``alabaster`` theme is used: the build needs no
network.
"""
import os.path as osp
import re

# realpath: the tests build this folder through a symlinked copy too.
ROOT = osp.abspath(osp.join(osp.dirname(osp.realpath(__file__)), '..', '..'))


def _version() -> str:
    """The package version, read without importing mmdist (and torch)."""
    with open(osp.join(ROOT, 'mmdist', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


project = 'mmdist'
copyright = '2024-2025, mmdist contributors'
author = 'mmdist contributors'
version = release = _version()

extensions = ['myst_parser']
source_suffix = {'.md': 'markdown'}
master_doc = root_doc = 'index'
# `[text](page.md#a-heading)` links resolve to anchors of headings down to
# level 3, slugified as GitHub does.
myst_heading_anchors = 3
myst_enable_extensions = ['colon_fence']
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']

html_theme = 'alabaster'
html_title = f'mmdist {release}'
html_static_path = []
