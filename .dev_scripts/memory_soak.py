"""Train a tiny distillation for many steps and report resident memory.

The distiller's hooks keep nothing between steps; if they did, resident
memory would grow with the number of steps. The script trains the demo
detector pair (random teacher, synthetic batch) and prints the resident set
size after the warm-up steps and at the end.

Usage:
    python .dev_scripts/memory_soak.py [--steps 300] [--pair det|seg]
"""
import argparse
import gc

import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope

import mmdist  # noqa: F401
from mmdist.testing import strip_pretrained
from mmdist.utils.build import build_model


def rss_mb() -> float:
    with open('/proc/self/statm') as f:
        pages = int(f.read().split()[1])
    import resource
    return pages * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--warmup', type=int, default=20)
    parser.add_argument('--pair', default='det', choices=['det', 'seg'])
    args = parser.parse_args()
    import sys
    sys.path.insert(0, __file__.rsplit('/', 1)[0])
    from benchmark_step import make_batch

    cfg = Config.fromfile(f'configs/demo/{args.pair}_student_dist.py')
    strip_pretrained(cfg.model)
    init_default_scope('mmdet' if args.pair == 'det' else 'mmseg')
    model = build_model(cfg)
    model.train()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-4))
    data = make_batch(args.pair, 2)
    start = None
    for step in range(1, args.steps + 1):
        model.train_step(data, optim)
        if step == args.warmup:
            gc.collect()
            start = rss_mb()
            print(f'step {step}: resident memory {start:.1f} MB')
    gc.collect()
    end = rss_mb()
    print(f'step {args.steps}: resident memory {end:.1f} MB '
          f'({end - start:+.1f} MB over {args.steps - args.warmup} steps)')
    print('records held after the last step:',
          sum(len(r.records) for r in model.recorders))


if __name__ == '__main__':
    main()
