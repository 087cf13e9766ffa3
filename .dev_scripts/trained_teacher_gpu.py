"""Fidelity of the fast teacher on a GPU, with trained teachers.

The GPU machine has torch but no OpenMMLab, so a trained MMDet/MMSeg teacher
cannot be built there. This tool moves the computation, not the stack:

1. ``export`` (here): builds the teacher of a distillation config with its
   trained weights, traces its minimal forward (the teacher's own input
   normalisation, ``extract_feat`` and the head whose outputs the stock
   ``predict`` post-processes) with ``torch.fx`` into a module of plain
   torch layers, and saves it with the split's images (uint8, as the
   pipeline gives them) to ``OUT_DIR/<name>.pt``. Before saving it checks
   that the traced module gives exactly the head outputs of the teacher run
   through its own data preprocessor.
2. ``.dev_scripts/gpu_check.py --trained DIR`` (on the GPU): runs every
   exported module in strict float32 and in the fast forms
   ``teacher_precision`` builds (``fast_form.make_fast``) and writes their
   head outputs back (float32).
3. ``evaluate`` (here): post-processes each form's outputs with the stock
   head (``predict_by_feat``) and scores them with the config's stock
   evaluator (CocoMetric, IoUMetric), and compares the distilled rows to
   the float32 ones (mean KL, top-1 agreement, as
   ``teacher_fidelity.py`` does on the CPU).

Supports single-stage dense detectors (``bbox_head``) and encoder-decoder
segmentors (``decode_head``): the demo's teachers.

Usage:
    python .dev_scripts/trained_teacher_gpu.py export CONFIG NAME OUT_DIR
        [--checkpoint CKPT] [--split test]
    python .dev_scripts/trained_teacher_gpu.py evaluate CONFIG NAME
        OUTPUTS_DIR [--checkpoint CKPT] [--split test] [--json FILE]
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Tuple

import torch
import torch.fx
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from torch import nn

import mmdist  # noqa: F401  (registers mmdist, safe checkpoint loading)
from mmdist.utils import build_model, resolve_teacher_paths

# compare_rows is the user tool's comparison, shared so both report alike.
sys.path.insert(
    0,
    osp.join(
        osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools',
        'analysis_tools'))
from teacher_fidelity import compare_rows  # noqa: E402

HEADS = ('bbox_head', 'decode_head')


class MinimalForward(nn.Module):
    """uint8 images -> the teacher's head outputs, as its predict runs it.

    Args:
        model (nn.Module): The trained teacher (eval mode).
        head (str): ``'bbox_head'`` or ``'decode_head'``.
    """

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        self.model = model
        self.head = head
        pre = model.data_preprocessor
        if not getattr(pre, '_enable_normalize', True) or not hasattr(
                pre, 'mean'):
            raise ValueError(f'{type(pre).__name__} does not normalise: '
                             'not supported by the traced forward')
        # MMEngine's ImgDataPreprocessor (MMDet) and MMSeg's name it apart.
        self.flip = bool(
            getattr(pre, '_channel_conversion', False)
            or getattr(pre, 'channel_conversion', False))
        self.register_buffer('mean', pre.mean.clone(), persistent=True)
        self.register_buffer('std', pre.std.clone(), persistent=True)

    def forward(self, images: torch.Tensor):
        """uint8 ``(N, 3, H, W)`` images -> the head's raw outputs."""
        x = images.float()
        if self.flip:
            x = x[:, [2, 1, 0]]
        x = (x - self.mean) / self.std
        return getattr(self.model, self.head)(self.model.extract_feat(x))


def teacher_and_loader(config: str, checkpoint: str, split: str):
    """The float32 teacher of ``config`` with its weights, its head's name
    and the split's dataloader (the distillation config's)."""
    cfg = Config.fromfile(config)
    resolve_teacher_paths(cfg, config)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    if checkpoint:
        cfg.model.teacher_ckpt = checkpoint
    cfg.model.teacher_precision = 'float32'
    distiller = build_model(cfg)
    teacher = distiller.teacher.eval()
    heads = [h for h in HEADS if getattr(teacher, h, None) is not None]
    if len(heads) != 1 or getattr(teacher, 'with_neck', None) is None:
        raise ValueError(f'{config}: the teacher {type(teacher).__name__} is '
                         'neither a single-stage dense detector nor an '
                         'encoder-decoder segmentor')
    mode = (getattr(teacher, 'test_cfg', None) or {}).get('mode', 'whole')
    if heads[0] == 'decode_head' and mode != 'whole':
        raise ValueError(f"{config}: the teacher's test_cfg.mode is {mode!r}; "
                         "the traced forward runs the whole image ('whole')")
    loader = Runner.build_dataloader(cfg[f'{split}_dataloader'])
    return cfg, distiller, teacher, heads[0], loader


def batches(teacher: nn.Module,
            loader) -> List[Tuple[torch.Tensor, torch.Tensor, list]]:
    """Per batch, in the loader's order: the uint8 images stacked, the same
    images through the teacher's data preprocessor, and the preprocessed
    sample list (img metas and ground truth)."""
    found = []
    for data in loader:
        images = data['inputs']
        sizes = {tuple(image.shape) for image in images}
        if len(sizes) != 1:
            raise ValueError(f'images of several sizes in one batch: {sizes}')
        processed = teacher.data_preprocessor(data, False)
        if tuple(processed['inputs'].shape[-2:]) != tuple(
                images[0].shape[-2:]):
            raise ValueError('the data preprocessor pads the images '
                             f'({tuple(images[0].shape)} -> '
                             f"{tuple(processed['inputs'].shape)}): not "
                             'supported by the traced forward')
        found.append((torch.stack(images), processed['inputs'],
                      processed['data_samples']))
    return found


def flat(outputs) -> List[torch.Tensor]:
    """Head outputs (a tensor, or tuples of per-level lists) as a list."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for item in outputs for t in flat(item)]


@torch.no_grad()
def export(args) -> None:
    """Trace the teacher's minimal forward, check it against the stock
    teacher on every batch of the split, and save it with the images.

    Args:
        args (argparse.Namespace): ``config``, ``name``, ``out_dir``,
            ``checkpoint`` (None keeps the config's) and ``split``.
    """
    _, distiller, teacher, head, loader = teacher_and_loader(
        args.config, args.checkpoint, args.split)
    forward = MinimalForward(teacher, head).eval()
    traced = torch.fx.symbolic_trace(forward)
    data = batches(teacher, loader)
    for images, inputs, _ in data:
        stock = getattr(teacher, head)(teacher.extract_feat(inputs))
        for a, b in zip(flat(stock), flat(traced(images)), strict=True):
            if not torch.equal(a, b):
                raise RuntimeError('the traced forward differs from the '
                                   'teacher run through its preprocessor: '
                                   f'{float((a - b).abs().max()):.3g}')
    # The distiller's recording hooks came along with the layers: drop them,
    # the GPU machine has no mmdist to unpickle them with.
    for module in traced.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    modules = dict(traced.named_modules())
    distilled = [
        f'model.{t.teacher_module}' for t in distiller.terms
        if f'model.{t.teacher_module}' in modules
    ]
    outputs = [
        p for p in modules if p.startswith(f'model.{head}.')
        and p.count('.') == 2 and isinstance(modules[p], nn.Conv2d)
    ]
    # The distilled outputs among the flat ones: a dense detector's class
    # scores (the first of its (scores, boxes) tuple, one per level), a
    # segmentor's logits.
    outputs_of_one = traced(data[0][0][:1])
    distilled_outputs = list(
        range(len(outputs_of_one[0]) if head == 'bbox_head' else 1))
    os.makedirs(args.out_dir, exist_ok=True)
    path = osp.join(args.out_dir, f'{args.name}.pt')
    torch.save(
        dict(
            module=traced,
            images=torch.cat([i for i, _, _ in data]),
            batch_size=len(data[0][0]),
            distilled=distilled,
            distilled_outputs=distilled_outputs,
            outputs=outputs,
            head=head,
            config=args.config), path)
    print(f'{path}: {len(data)} batches, '
          f'{sum(len(i) for i, _, _ in data)} images, distilled {distilled}, '
          f'{osp.getsize(path) / 2**20:.1f} MiB')


def unflatten(like, tensors: List[torch.Tensor]):
    """Rebuild the structure of ``like`` from the flat list ``tensors``."""
    if isinstance(like, torch.Tensor):
        return tensors.pop(0)
    return type(like)(unflatten(item, tensors) for item in like)


@torch.no_grad()
def predictions(teacher, head: str, data, outputs: List[torch.Tensor]):
    """Per batch of ``data``: the data samples with the predictions the
    stock head post-processing makes of head outputs ``outputs`` (flat,
    every image of the split along dim 0), as the teacher's ``predict``
    would return them."""
    # The nesting of the head's outputs (per-level lists in tuples for a
    # dense detector), from one image.
    like = getattr(teacher, head)(teacher.extract_feat(data[0][1][:1]))
    start = 0
    for images, _, samples in data:
        stop = start + len(images)
        batch = unflatten(like, [t[start:stop] for t in outputs])
        metas = [s.metainfo for s in samples]
        if head == 'bbox_head':
            results = teacher.bbox_head.predict_by_feat(
                *batch, batch_img_metas=metas, rescale=True)
            yield teacher.add_pred_to_datasample(samples, results)
        else:
            logits = teacher.decode_head.predict_by_feat(batch, metas)
            yield teacher.postprocess_result(logits, samples)
        start = stop


def metric_of(cfg: Config, teacher, head: str, data,
              outputs: List[torch.Tensor], split: str,
              dataset_meta: dict) -> Dict[str, float]:
    """The config's stock evaluator's metrics for head outputs
    ``outputs`` (see :func:`predictions`)."""
    evaluator = Runner.build_evaluator(None, cfg[f'{split}_evaluator'])
    evaluator.dataset_meta = dataset_meta
    for predicted in predictions(teacher, head, data, outputs):
        evaluator.process(data_samples=predicted, data_batch=None)
    return evaluator.evaluate(sum(len(images) for images, _, _ in data))


def evaluate(args) -> None:
    """Score every form's head outputs returned by the GPU check with the
    stock post-processing and evaluator, and compare its distilled rows to
    fp32's; prints a table, and writes it as JSON with ``args.json``.

    Args:
        args (argparse.Namespace): ``config``, ``name``, ``outputs_dir``
            (the ``<name>.<form>.out.pt`` files), ``checkpoint``, ``split``
            and ``json``.
    """
    cfg, distiller, teacher, head, loader = teacher_and_loader(
        args.config, args.checkpoint, args.split)
    data = batches(teacher, loader)
    forms, found = {}, {}
    for path in sorted(
            glob.glob(osp.join(args.outputs_dir, f'{args.name}.*.out.pt'))):
        found = torch.load(path, weights_only=True)
        forms[found['form']] = found
    if 'fp32 strict' not in forms:
        raise FileNotFoundError(f'no {args.name}.fp32_strict.out.pt in '
                                f'{args.outputs_dir}')
    loss = next(
        t.loss for t in distiller.terms if t.teacher_module.startswith(head))
    report = dict(device=found.get('device'), config=args.config, forms={})
    reference = forms['fp32 strict']['outputs']
    for form, saved in forms.items():
        outputs = saved['outputs']
        metrics = metric_of(cfg, teacher, head, data, outputs, args.split,
                            loader.dataset.metainfo)
        row = dict(
            metrics={
                k: float(v)
                for k, v in metrics.items()
            }, ms=saved['ms'])
        kl = agree = rows = 0.
        for index in saved['distilled_outputs']:
            k, a, r, _ = compare_rows(outputs[index], reference[index],
                                      loss.activation, loss.tau,
                                      loss.num_classes)
            kl, agree, rows = kl + k, agree + a, rows + r
        row.update(kl=kl / max(rows, 1), top1_agreement=agree / max(rows, 1))
        report['forms'][form] = row
    print(f'| {args.name} | ' + ' | '.join(report['forms']) + ' |')
    print('| --- ' * (1 + len(report['forms'])) + '|')
    for key in report['forms']['fp32 strict']['metrics']:
        print(f'| {key} | ' + ' | '.join(f"{row['metrics'][key]:.4g}"
                                         for row in report['forms'].values()) +
              ' |')
    for key in ('kl', 'top1_agreement', 'ms'):
        print(f'| {key} | ' + ' | '.join(f'{row[key]:.3g}'
                                         for row in report['forms'].values()) +
              ' |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=1)


def main() -> None:
    """``export`` or ``evaluate``, as the module docstring says."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    for name in ('export', 'evaluate'):
        p = sub.add_parser(name)
        p.add_argument('config')
        p.add_argument('name')
        p.add_argument('out_dir' if name == 'export' else 'outputs_dir')
        p.add_argument('--checkpoint', default=None)
        p.add_argument('--split', default='test')
        if name == 'evaluate':
            p.add_argument('--json', default=None)
    args = parser.parse_args()
    export(args) if args.command == 'export' else evaluate(args)


if __name__ == '__main__':
    main()
