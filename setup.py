"""mmdist: DIST knowledge distillation for OpenMMLab 2.0."""
import os
import os.path as osp
import shutil
import sys
from setuptools import find_packages, setup
from typing import List

HERE = osp.dirname(osp.abspath(__file__))


def read_version() -> str:
    """The version string of ``mmdist/version.py``, read without importing
    the package (and so torch)."""
    scope: dict = {}
    with open(osp.join(HERE, 'mmdist', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def parse_requirements(fname: str) -> List[str]:
    """Requirement specifiers listed in a file of ``requirements/``.

    Comments and blank lines are dropped and ``-r other.txt`` lines are
    followed, as pip reads the file; each specifier (name, extras, version
    range, environment marker) is passed on unchanged, so setup.py and
    ``pip install -r`` agree.

    Args:
        fname (str): File name inside ``requirements/``, e.g.
            ``'runtime.txt'``.

    Returns:
        list[str]: The specifiers, in file order, without duplicates.
    """
    requirements: List[str] = []
    with open(osp.join(HERE, 'requirements', fname)) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            if line.startswith(('-r ', '--requirement ')):
                nested = parse_requirements(line.split(None, 1)[1])
            elif line.startswith('-'):
                # Index and constraint options configure pip, not the package.
                continue
            else:
                nested = [line]
            requirements += [r for r in nested if r not in requirements]
    return requirements


def extras() -> dict:
    """``extras_require``: one extra per task package and per tool set.

    ``import mmdist`` needs only ``requirements/runtime.txt``; MMDetection,
    MMSegmentation and MMPretrain are imported by the configs and tools that
    use them, so each is an extra (``pip install mmdist[mmdet]``). ``all``
    is every extra but ``mim``, whose openmim drags in an old-setuptools pin.

    Returns:
        dict[str, list[str]]: Requirement specifiers by extra name.
    """
    groups = {
        name: parse_requirements(f'{name}.txt')
        for name in ('mmdet', 'mmseg', 'mmpretrain', 'tests', 'docs', 'mim')
    }
    everything: List[str] = []
    for name in ('mmdet', 'mmseg', 'mmpretrain', 'tests', 'docs'):
        everything += [r for r in groups[name] if r not in everything]
    groups['all'] = everything
    return groups


def add_mim_extension() -> None:
    """Ship configs/ and tools/ as ``mmdist/.mim/{configs,tools}`` and
    configs/model-index.yml as ``mmdist/.mim/model-index.yml``.

    MMEngine resolves ``mmdist::<path>`` to
    ``<package dir>/.mim/configs/<path>`` (as for ``mmdet::``), reading
    ``.mim/model-index.yml`` and the metafiles it imports first; ``mim
    search/train/test mmdist`` read the same index and run
    ``.mim/tools/{train,test}.py``. Editable installs link to the source
    folders so edits show at once; other builds copy them into the package
    (and the wheel carries them as package data).
    """
    editable = any(
        cmd in sys.argv for cmd in ('develop', 'editable_wheel', 'dist_info'))
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
        author='mmdist contributors',
        keywords='computer vision, knowledge distillation, DIST, '
        'object detection, semantic segmentation, image classification',
        license='Apache License 2.0',
        classifiers=[
            'Development Status :: 4 - Beta',
            'Operating System :: OS Independent',
            'Programming Language :: Python :: 3',
            'Topic :: Scientific/Engineering :: Artificial Intelligence',
        ],
        packages=find_packages(exclude=('configs', 'tools', 'tests')),
        include_package_data=True,
        package_data={
            'mmdist':
            ['.mim/configs/**/*', '.mim/tools/**/*', '.mim/model-index.yml']
        },
        exclude_package_data={'mmdist': ['.mim/**/__pycache__/*']},
        python_requires='>=3.9',
        # Ranges the code supports (requirements/*.txt); `make install` holds
        # them at the releases the tests ran with (requirements/tested.txt).
        install_requires=parse_requirements('runtime.txt'),
        extras_require=extras(),
        zip_safe=False)
