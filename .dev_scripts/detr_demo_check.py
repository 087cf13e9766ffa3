"""DIST on shared distillation queries with a trained DINO teacher.

Demo-sized DINO detectors on the demo's detection data
(``tools/misc/demo.py``: COCO-layout shapes, 5 classes, 128x128 images),
built from MMDetection's ``dino-4scale_r50_8xb2-12e_coco.py`` with smaller
parts, from scratch: the teacher a ResNet-34 of base width 32 with 3
encoder and 3 decoder layers, the student a ResNet-18 of base width 16
with 2 and 2; both 256 wide (DINO's decoder needs 256), feed-forward 512,
50 queries, 3 levels (strides 16, 32, 64). The teacher is trained alone
with ``tools/train.py``; if it reaches ``--min-map``, the student is
trained alone, with KD and with DIST on the shared queries (the short form
``dict(head='bbox_head', ...)``: the teacher's 50 proposals and 50 random
boxes, last decoder layer) for each seed. Otherwise the teacher's
validation curve is all there is to report.

Usage:
    python .dev_scripts/detr_demo_check.py [--work-dir work_dirs/detr_demo]
        [--teacher-iters 1800] [--iters 400] [--images 400]
        [--seeds 0 1 2] [--min-map 0.3] [--teacher-only]
        [--variants student kd dist]
"""
import argparse
import copy
import importlib.util
import os.path as osp

from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DINO = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
# (ResNet depth, base width, encoder layers, decoder layers)
SIZES = dict(teacher=(34, 32, 3, 3), student=(18, 16, 2, 2))
# Transformer width of both models: DINO's decoder encodes reference boxes
# with 128 features per coordinate, which fixes its width at 256.
WIDTH = 256
LEVELS = 3


def _script(name: str):
    """A script of ``.dev_scripts`` or ``tools/misc`` as a module."""
    folder = 'tools/misc' if name == 'demo.py' else '.dev_scripts'
    path = osp.join(ROOT, folder, name)
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dino_model(role: str) -> dict:
    """The demo-sized DINO of ``role`` (``'teacher'`` or ``'student'``)."""
    path, _ = Config._get_cfg_path(DINO, '')
    model = copy.deepcopy(Config.fromfile(path).model)
    depth, base, enc, dec = SIZES[role]
    model.num_queries = 50  # up to 6 shapes per image; top-50 of 84 tokens
    model.num_feature_levels = LEVELS
    model.backbone = dict(
        type='ResNet',
        depth=depth,
        base_channels=base,
        num_stages=4,
        out_indices=(2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=None)
    # Strides 16, 32 and 64 (84 encoder tokens on a 128x128 image): the
    # shapes are 10 to 40 pixels, and stride 8 would quadruple the encoder.
    model.neck.in_channels = [base * 4, base * 8]
    model.neck.out_channels = WIDTH
    model.neck.num_outs = LEVELS
    model.encoder.num_layers = enc
    model.decoder.num_layers = dec
    for layer in (model.encoder.layer_cfg, model.decoder.layer_cfg):
        for key in ('self_attn_cfg', 'cross_attn_cfg', 'ffn_cfg'):
            if key not in layer:
                continue
            layer[key].embed_dims = WIDTH
            if 'num_levels' in layer[key]:  # deformable attention
                layer[key].num_levels = LEVELS
        layer.ffn_cfg.feedforward_channels = WIDTH * 2
    model.positional_encoding.num_feats = WIDTH // 2
    model.bbox_head.num_classes = 5
    model.bbox_head.embed_dims = WIDTH
    model.dn_cfg.group_cfg.num_dn_queries = 30
    model.test_cfg.max_per_img = 50
    return model


def base_config(data_root: str, work_dir: str, iters: int,
                seed: int) -> Config:
    """The demo detector's data, evaluation and schedule (AdamW, linear
    warm-up, cosine), with a DINO student alone as the model."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'demo', 'det_student.py'))
    cfg.model = dino_model('student')
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed)
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = data_root
    ann = osp.join(data_root, 'annotations', 'instances_val2017.json')
    cfg.val_evaluator.ann_file = ann
    cfg.test_evaluator.ann_file = ann
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = max(1, iters // 6)
    warmup = max(1, iters // 20)
    cfg.param_scheduler = [
        dict(
            type='LinearLR',
            start_factor=0.1,
            by_epoch=False,
            begin=0,
            end=warmup),
        dict(
            type='CosineAnnealingLR', by_epoch=False, begin=warmup, end=iters)
    ]
    # From scratch: a higher rate than DINO's fine-tuning 1e-4, and the
    # demo's clipping instead of DINO's 0.1.
    cfg.optim_wrapper = dict(
        optimizer=dict(type='AdamW', lr=5e-4, weight_decay=1e-4),
        clip_grad=dict(max_norm=1.0, norm_type=2))
    cfg.default_hooks.checkpoint.interval = iters
    cfg.default_hooks.logger.interval = max(1, iters // 30)
    return cfg


def variant(cfg: Config, kind: str, teacher_dir: str,
            teacher_ckpt: str) -> Config:
    """``cfg`` (the student alone) as ``kind``: ``'student'``, ``'kd'`` or
    ``'dist'`` (the short form on the shared queries)."""
    cfg = copy.deepcopy(cfg)
    if kind == 'student':
        return cfg
    loss = dict(type='mmdist.DISTLoss') if kind == 'dist' else dict(
        type='mmdist.KDLoss')
    cfg.custom_imports = dict(imports=['mmdist'], allow_failed_imports=False)
    cfg.model = dict(
        type='mmdist.Distiller',
        student=cfg.model,
        teacher=osp.join(teacher_dir, 'config.py'),
        teacher_ckpt=teacher_ckpt,
        teacher_precision='float32',
        # The teacher's 50 proposals and as many random boxes (the default
        # 100 + 100 is for the zoo's 900 queries).
        distill_terms=[
            dict(
                head='bbox_head',
                loss=loss,
                queries=dict(num_teacher=50, num_random=50))
        ])
    return cfg


def train(cfg: Config, work_dir: str) -> list:
    """Train with tools/train.py (unless done, see ``subset_det_check``),
    each run's scalars in a visualizer of its own; the validation curve."""
    cfg.visualizer.name = 'vis_' + osp.basename(work_dir)
    return _script('subset_det_check.py').train(cfg, work_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/detr_demo')
    parser.add_argument('--teacher-iters', type=int, default=1800)
    parser.add_argument('--iters', type=int, default=400)
    parser.add_argument('--images', type=int, default=400)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--min-map', type=float, default=0.3)
    parser.add_argument('--teacher-only', action='store_true')
    parser.add_argument(
        '--variants',
        nargs='+',
        default=['student', 'kd', 'dist'],
        choices=['student', 'kd', 'dist'],
        help='the students to train (several processes can share a seed)')
    args = parser.parse_args()
    work = osp.abspath(args.work_dir)
    data_root, _ = _script('demo.py').make_data('det', osp.join(work, 'data'),
                                                args.images)

    teacher_dir = osp.join(work, 'teacher')
    teacher_cfg = base_config(data_root, teacher_dir, args.teacher_iters, 0)
    teacher_cfg.model = dino_model('teacher')
    curve = train(teacher_cfg, teacher_dir)
    print('teacher validation bbox mAP: ' +
          ', '.join(f'{step}: {value:.3f}' for step, value in curve))
    if args.teacher_only or curve[-1][1] < args.min_map:
        return
    teacher_ckpt = osp.join(teacher_dir, f'iter_{args.teacher_iters}.pth')

    results = {'teacher (alone)': [curve[-1][1]]}
    names = dict(student='student alone', kd='KD', dist='DIST')
    for seed in args.seeds:
        for kind in args.variants:
            name = names[kind]
            run_dir = osp.join(work, f'{kind}_seed{seed}')
            cfg = variant(
                base_config(data_root, run_dir, args.iters, seed), kind,
                teacher_dir, teacher_ckpt)
            mAP = train(cfg, run_dir)[-1][1]
            results.setdefault(name, []).append(mAP)
            print(f'seed {seed} {name}: bbox mAP {mAP:.3f}', flush=True)

    print(f'\nDemo DINO: student {args.iters} iterations, seeds {args.seeds}')
    _script('subset_det_check.py').print_table(results)


if __name__ == '__main__':
    main()
