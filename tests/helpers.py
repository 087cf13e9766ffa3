"""Shared helpers: shipped configs loaded offline, models, small batches."""
import os
import subprocess
import sys
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope

import mmdist  # noqa: F401
from mmdist.testing import strip_pretrained
from mmdist.utils import build_model

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / 'configs'


def shipped_configs(task: str):
    """Relative paths of the shipped distillation configs of a task."""
    return sorted(
        str(p.relative_to(CONFIGS)) for p in (CONFIGS / task).glob('*.py')
        if p.stem.endswith(('_dist', '_kd')))


def load_offline(rel_path: str) -> Config:
    """A shipped config with every download switched off."""
    cfg = Config.fromfile(str(CONFIGS / rel_path))
    strip_pretrained(cfg.model)
    return cfg


def build(cfg: Config):
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = build_model(cfg)
    model.init_weights()
    return model


def train_step(model, data, lr=0.01):
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=lr))
    model.train()
    return model.train_step(data, optim)


def det_batch(num_classes=80, size=(128, 128), batch=2, items=3):
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(
        batch_size=batch,
        image_shapes=[(3, *size)] * batch,
        num_items=[items] * batch,
        num_classes=num_classes)


def seg_batch(num_classes=19, size=(64, 128), batch=2, seed=0):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(
            torch.randint(
                0, 256, (3, *size), generator=gen, dtype=torch.uint8))
        labels = torch.randint(0, num_classes, (1, *size), generator=gen)
        labels[:, -4:] = 255
        sample = SegDataSample(
            metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size))
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def cls_batch(num_classes=1000, size=64, batch=4, seed=0):
    from mmpretrain.structures import DataSample
    gen = torch.Generator().manual_seed(seed)
    inputs = [
        torch.randint(
            0, 256, (3, size, size), generator=gen, dtype=torch.uint8)
        for _ in range(batch)
    ]
    samples = [
        DataSample().set_gt_label(
            int(torch.randint(num_classes, (1, ), generator=gen)))
        for _ in range(batch)
    ]
    return dict(inputs=inputs, data_samples=samples)


def run_tool(*args, env=None, timeout=900, cwd=REPO):
    """Run a tools/ script with this interpreter; return the completed
    process (output captured), raising with the output on failure."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    script = str(REPO / 'tools' / args[0])
    cmd = (['bash', script] if script.endswith('.sh') else
           [sys.executable, script]) + [str(a) for a in args[1:]]
    if script.endswith('.sh'):
        full_env['PYTHON'] = sys.executable
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} failed ({proc.returncode}):\n'
                             f'{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}')
    return proc


# Two runs that compute the same training in another float32 summation
# order (ranks vs one process, other CPU kernels) may leave their weights
# apart by at most this fraction of how far each tensor moved: rounding
# enters the weights only through the updates (tests/test_loss_sync.py,
# test_two_process_training_equals_one_process_global_batch, says why).
REDUCTION_ORDER_BOUND = 1e-2


def save_initial_student(cfg: Config, path) -> dict:
    """Build ``cfg.model.student`` (seed 0), save it where ``load_from``
    can load it into the distiller, and return its floating-point tensors
    under their ``student.`` keys: the weights every compared run starts
    from."""
    from mmengine.registry import MODELS
    from mmengine.runner import save_checkpoint
    init_default_scope(cfg.default_scope)
    torch.manual_seed(0)
    student = MODELS.build(cfg.model.student)
    student.init_weights()
    start = {
        f'student.{k}': v.clone()
        for k, v in student.state_dict().items() if v.is_floating_point()
    }
    save_checkpoint({'state_dict': start}, str(path))
    return start


def weight_gap(a: dict, b: dict, start: dict) -> tuple:
    """The largest ``max|a - b| / max|b - start|`` over the tensors of
    ``start`` that training moves, and the tensor it is found in."""
    worst, where = 0., None
    for key, w0 in start.items():
        moved = float((b[key] - w0).abs().max())
        if moved == 0:
            assert torch.equal(a[key], b[key]), key
            continue
        ratio = float((a[key] - b[key]).abs().max()) / moved
        if ratio > worst:
            worst, where = ratio, key
    return worst, where
