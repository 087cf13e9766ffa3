"""mmdist: DIST knowledge distillation for OpenMMLab 2.0."""
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_version() -> str:
    scope: dict = {}
    with open(osp.join(HERE, 'mmdist', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def add_mim_extension() -> None:
    """Ship configs/ and tools/ as ``mmdist/.mim/{configs,tools}`` and
    configs/model-index.yml as ``mmdist/.mim/model-index.yml``.

    MMEngine resolves ``mmdist::<path>`` to ``<package dir>/.mim/configs/<path>``
    (as for ``mmdet::``), reading ``.mim/model-index.yml`` and the metafiles
    it imports first; ``mim search/train/test mmdist`` read the same index
    and run ``.mim/tools/{train,test}.py``. Editable installs link to the
    source folders so edits show at once; other builds copy them into the
    package (and the wheel carries them as package data).
    """
    editable = any(cmd in sys.argv
                   for cmd in ('develop', 'editable_wheel', 'dist_info'))
    mim = osp.join(HERE, 'mmdist', '.mim')
    os.makedirs(mim, exist_ok=True)
    # MMEngine reads .mim/model-index.yml before falling back to
    # .mim/configs/<path>.
    for name, src in (('configs', 'configs'), ('tools', 'tools'),
                      ('model-index.yml', 'configs/model-index.yml')):
        src = osp.join(HERE, src)
        dst = osp.join(mim, name)
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if editable:
            os.symlink(osp.relpath(src, mim), dst)
        elif osp.isdir(src):
            shutil.copytree(
                src,
                dst,
                ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


if __name__ == '__main__':
    add_mim_extension()
    setup(
        name='mmdist',
        version=read_version(),
        description='DIST knowledge distillation (Knowledge Distillation '
        'from A Stronger Teacher) for MMDetection, MMSegmentation and '
        'MMPretrain',
        long_description=open(osp.join(HERE, 'README.md')).read(),
        long_description_content_type='text/markdown',
        license='Apache License 2.0',
        packages=find_packages(exclude=('configs', 'tools', 'tests')),
        include_package_data=True,
        package_data={
            'mmdist':
            ['.mim/configs/**/*', '.mim/tools/**/*', '.mim/model-index.yml']
        },
        exclude_package_data={'mmdist': ['.mim/**/__pycache__/*']},
        python_requires='>=3.8',
        install_requires=[
            'torch>=2.0',
            'mmengine==0.10.7',
            'mmcv==2.1.0',
            'mmdet==3.3.0',
            'mmsegmentation==1.2.2',
            'mmpretrain==1.2.0',
            'ftfy',
            'regex',
            'numpy',
            'setuptools<81',
        ],
        extras_require={
            'tests': ['pytest', 'pytest-timeout', 'pycocotools'],
            # openmim pulls openxlab, some versions of which pin an old
            # setuptools: keep setuptools' bounds in the same install.
            'mim': ['openmim', 'setuptools>=77,<81'],
        },
        zip_safe=False)
