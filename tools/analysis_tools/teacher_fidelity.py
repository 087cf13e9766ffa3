"""Does the fast teacher teach what the float32 teacher teaches?

For a distillation config and a trained teacher:

1. the teacher is evaluated the way the README checks a teacher,
   ``tools/test.py CONFIG [CHECKPOINT] --teacher``, once with
   ``teacher_precision='float32'`` and once in the fast form, and the
   metrics are compared in points (COCO metrics x 100; mIoU and top-1 are
   percentages already);
2. both teachers run their minimal forward (what a distillation step runs)
   on the same batches of the same split, and per distillation term the
   distilled outputs are compared row by row, rows as the term's loss
   defines them (``num_classes``, ``tau``, ``activation``): the mean
   ``KL(float32 || fast)`` (softmax over the classes; for sigmoid heads the
   binary KL summed over a row's classes) and the top-1 agreement (share of
   rows whose largest logit is the same class), plus the largest absolute
   difference.

Usage:
    python tools/analysis_tools/teacher_fidelity.py CONFIG [CHECKPOINT]
        [--precision bf16] [--split test] [--max-batches N]
        [--work-dir DIR] [--json FILE] [--cfg-options ...]

CHECKPOINT overrides the config's ``teacher_ckpt`` (as with
``tools/test.py --teacher``). Terms on RoI heads are not compared (the
teacher scores the student's RoIs there); feature terms get the mean
squared difference instead of KL and agreement.
"""
import argparse
import glob
import json
import os.path as osp
import subprocess
import sys
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

import mmdist  # noqa: F401  (registers mmdist, safe checkpoint loading)
from mmdist.losses.rows import as_rows
from mmdist.utils import build_model, resolve_teacher_paths

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def evaluate_teacher(config: str, checkpoint: Optional[str], precision: str,
                     work_dir: str, options: List[str]) -> Dict[str, float]:
    """``tools/test.py CONFIG --teacher`` with ``teacher_precision`` set;
    returns the metrics its test loop logged."""
    command = [sys.executable, osp.join(ROOT, 'tools', 'test.py'), config]
    if checkpoint:
        command.append(checkpoint)
    command += [
        '--teacher', '--work-dir', work_dir, '--cfg-options',
        f'model.teacher_precision={precision}', *options
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    # MMEngine's LoggerHook writes the test metrics to
    # <work_dir>/<timestamp>/<timestamp>.json.
    logs = sorted(
        glob.glob(osp.join(work_dir, '*', '*.json')), key=osp.getmtime)
    with open(logs[-1]) as f:
        metrics = json.load(f)
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def points(name: str, value: float) -> float:
    """A metric in points: COCO's fractions x 100, percentages as they
    are."""
    return 100 * value if name.startswith('coco/') else value


def compare_rows(fast: torch.Tensor, ref: torch.Tensor, activation: str,
                 tau: float, num_classes: Optional[int]) -> List[float]:
    """Sums over rows of KL(ref || fast) and of top-1 agreement, the row
    count and the largest absolute difference."""
    zf, _ = as_rows(fast.double() / tau, num_classes)
    zr, _ = as_rows(ref.double() / tau, num_classes)
    if activation == 'softmax':
        log_r, log_f = F.log_softmax(zr, 1), F.log_softmax(zf, 1)
        kl = (log_r.exp() * (log_r - log_f)).sum(1)
    else:
        pr = torch.sigmoid(zr)
        kl = (pr * (F.logsigmoid(zr) - F.logsigmoid(zf)) + (1 - pr) *
              (F.logsigmoid(-zr) - F.logsigmoid(-zf))).sum(1)
    agree = (zf.argmax(1) == zr.argmax(1)).double()
    return [
        float(kl.sum()),
        float(agree.sum()),
        kl.numel(),
        float((fast.double() - ref.double()).abs().max())
    ]


def teacher_levels(term) -> List[torch.Tensor]:
    """The teacher outputs a term recorded in this step, one per level
    (a module's tuple output gives one level per element), in float32."""
    records = term.teacher_outputs.records
    if getattr(term, 'max_calls', None) is not None:
        records = records[:term.max_calls]
    levels = []
    for output in records:
        items = output if isinstance(output, (tuple, list)) else [output]
        levels += [item.float() for item in items]
    return levels


def build(cfg: Config, precision: str):
    cfg = cfg.copy()
    cfg.model.teacher_precision = precision
    model = build_model(cfg)
    model.eval()
    return model


@torch.no_grad()
def compare_outputs(cfg: Config, precision: str, split: str,
                    max_batches: Optional[int]) -> Dict[str, dict]:
    """Per term: ``kl``, ``top1_agreement``, ``rows``, ``max_abs_diff``
    (logits terms) or ``mse`` (feature terms) of the fast teacher's
    distilled outputs against the float32 teacher's."""
    models = {p: build(cfg, p) for p in ('float32', precision)}
    reference, fast = models['float32'], models[precision]
    terms = [
        t for t in reference.terms
        if not t.teacher_module.startswith('roi_head.')
    ]
    totals = {t.name: [0.0, 0.0, 0, 0.0] for t in terms}
    loader = Runner.build_dataloader(cfg[f'{split}_dataloader'])
    for index, data in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        records = {}
        for key, model in models.items():
            batch = model.data_preprocessor(data, False)
            with model._recording():
                model._run_teacher(batch['inputs'], batch['data_samples'])
                records[key] = [
                    teacher_levels(term) for term in model.terms
                    if not term.teacher_module.startswith('roi_head.')
                ]
        for term, refs, fasts in zip(terms, records['float32'],
                                     records[precision]):
            total = totals[term.name]
            for ref, out in zip(refs, fasts):
                if hasattr(term.loss, 'activation'):
                    kl, agree, rows, diff = compare_rows(
                        out, ref, term.loss.activation, term.loss.tau,
                        term.loss.num_classes)
                else:  # a feature term: squared error per element
                    kl = float(((out - ref).double()**2).sum())
                    agree, rows = 0.0, out.numel()
                    diff = float((out - ref).abs().max())
                total[0] += kl
                total[1] += agree
                total[2] += rows
                total[3] = max(total[3], diff)
    result = {}
    for term in terms:
        kl, agree, rows, diff = totals[term.name]
        if hasattr(term.loss, 'activation'):
            result[term.name] = dict(
                kl=kl / max(rows, 1),
                top1_agreement=agree / max(rows, 1),
                rows=rows,
                max_abs_diff=diff)
        else:
            result[term.name] = dict(
                mse=kl / max(rows, 1), elements=rows, max_abs_diff=diff)
    result['form'] = fast.teacher_form.describe()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='distillation config')
    parser.add_argument(
        'checkpoint',
        nargs='?',
        help="the teacher's weights (default: the config's "
        'teacher_ckpt)')
    parser.add_argument(
        '--precision', default='bf16', choices=['bf16', 'fp16'])
    parser.add_argument(
        '--split', default='test', choices=['train', 'val', 'test'])
    parser.add_argument('--max-batches', type=int, default=None)
    parser.add_argument('--work-dir', default='work_dirs/teacher_fidelity')
    parser.add_argument('--json', help='also write the result here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()

    options = [f'{k}={v}' for k, v in (args.cfg_options or {}).items()]
    metrics = {
        p:
        evaluate_teacher(args.config, args.checkpoint, p,
                         osp.join(args.work_dir, p), options)
        for p in ('float32', args.precision)
    }
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    resolve_teacher_paths(cfg, args.config)
    if args.checkpoint:
        cfg.model.teacher_ckpt = args.checkpoint
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    outputs = compare_outputs(cfg, args.precision, args.split,
                              args.max_batches)

    print(f'{args.config}: teacher float32 against {outputs.pop("form")}')
    print('| metric | float32 | fast | fast - float32 (points) |')
    print('| --- | --- | --- | --- |')
    for name, value in metrics['float32'].items():
        fast = metrics[args.precision].get(name)
        if fast is None or name in ('step', 'epoch', 'iter', 'time',
                                    'data_time'):
            continue
        print(f'| {name} | {value:.4f} | {fast:.4f} | '
              f'{points(name, fast) - points(name, value):+.3f} |')
    print(f'\ndistilled outputs on the {args.split} split:')
    for name, stats in outputs.items():
        if 'kl' in stats:
            print(f'{name}: mean KL(float32 || fast) {stats["kl"]:.3e}, '
                  f'top-1 agreement {stats["top1_agreement"]:.4f} over '
                  f'{stats["rows"]} rows, max |diff| '
                  f'{stats["max_abs_diff"]:.3g}')
        else:
            print(f'{name}: mean squared difference {stats["mse"]:.3e} over '
                  f'{stats["elements"]} elements, max |diff| '
                  f'{stats["max_abs_diff"]:.3g}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(
                dict(config=args.config, metrics=metrics, outputs=outputs),
                f,
                indent=2)


if __name__ == '__main__':
    main()
