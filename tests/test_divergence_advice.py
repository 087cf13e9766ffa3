"""The divergence guard's advice works when followed literally (issue 27,
item 1): it names the newest checkpoint written before the loss began to
grow, describes it truthfully, and ``tools/train.py`` prints a restart
command (weights only, fresh optimizer and schedule, a new learning rate)
that runs."""
import importlib.util
import math
import re
import shlex
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from helpers import REPO
from mmdist.engine import DivergenceGuardHook, TrainingDiverged
from test_checkpoint import ToyData
from test_new_user_defects import toy_train


def _train_tool():
    spec = importlib.util.spec_from_file_location('train_tool',
                                                  REPO / 'tools' / 'train.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_advice_names_the_checkpoint_before_the_loss_grew(tmp_path):
    """lr triples every iteration: the loss grows for several iterations
    before it is inf. The newest checkpoint is finite but huge; the advice
    names the last one written before the growth, and training from its
    weights at the first learning rate stays finite."""
    torch.manual_seed(0)  # ToyModel is built before the Runner seeds
    runner = toy_train(
        tmp_path / 'run',
        ToyData(),
        max_iters=40,
        param_scheduler=dict(type='ExponentialLR', by_epoch=False, gamma=3.0))
    for hook in runner.hooks:
        if type(hook).__name__ == 'SafeCheckpointHook':
            hook.max_keep_ckpts = -1  # keep them all
    with pytest.raises(TrainingDiverged) as error:
        runner.train()
    guard = next(h for h in runner.hooks if isinstance(h, DivergenceGuardHook))
    losses = guard.losses
    first = min(i for i, v in losses.items() if not math.isfinite(v))
    onset = guard.onset(first)
    assert onset < first - 2, losses  # the loss grew before it was inf
    message = str(error.value)
    chosen = error.value.restart_from
    assert chosen == str(tmp_path / 'run' / f'iter_{onset - 2}.pth')
    assert re.search(
        rf'The last checkpoint before the divergence \(the loss grew from '
        rf'iteration {onset} on .* until it was not finite\) is '
        rf'{re.escape(chosen)} \(after iteration {onset - 2}; finite '
        rf'weights, largest \|value\| [0-9.e+-]+ \(linear\.(weight|bias)\); '
        rf'the loss computed from its weights at iteration {onset - 1} '
        rf'was [0-9.e+-]+; the lowest loss before it was', message), message
    assert f'load_from={chosen} resume=False' in message
    # The newest checkpoint is finite but already diverging: said so.
    newest = max(
        int(p.stem[len('iter_'):])
        for p in (tmp_path / 'run').glob('iter_*.pth'))
    assert newest >= first - 1
    assert re.search(
        rf'iter_{newest}\.pth \(after iteration {newest}\) was written '
        rf'after the divergence began \(finite weights, largest \|value\| '
        r'[0-9.]+e\+[1-3][0-9] .*do not resume from it', message), message
    # Following the advice: its weights, a fresh optimizer, a low lr.
    restart = toy_train(tmp_path / 'restart', ToyData(), max_iters=20)
    restart._load_from, restart._resume = chosen, False
    restart.train()
    assert restart.iter == 20
    assert all(torch.isfinite(p).all() for p in restart.model.parameters())


def test_restart_command_repeats_the_run_without_resume(tmp_path):
    """The printed command: the run's own arguments as typed, --resume and
    the overridden keys left out, a work dir that does not exist yet."""
    tool = _train_tool()
    argv = [
        'configs/x.py', '--resume', 'old/iter_4.pth', '--cfg-options',
        'optim_wrapper.clip_grad=None', 'load_from=a.pth',
        'optim_wrapper.optimizer.lr=1e6', 'train_cfg.max_iters=8',
        '--cfg-options', 'data_root=my dir/'
    ]
    old = sys.argv
    sys.argv = ['tools/train.py', *argv]
    try:
        args = tool.parse_args()
    finally:
        sys.argv = old
    work = tmp_path / 'work'
    (tmp_path / 'work_restart').mkdir()  # taken by an earlier restart
    command = tool.restart_command(args, str(work), 'work/iter_3.pth', True)
    assert shlex.split(command) == [
        sys.executable, 'tools/train.py', 'configs/x.py', '--work-dir',
        f'{work}_restart2', '--cfg-options', 'optim_wrapper.clip_grad=None',
        'train_cfg.max_iters=8', 'data_root=my dir/',
        'load_from=work/iter_3.pth', 'resume=False',
        'optim_wrapper.optimizer.lr=NEW_LR'
    ]
    error = TrainingDiverged('diverged', None, 1.3e5)
    cfg = Config(
        dict(
            work_dir=str(work),
            optim_wrapper=dict(optimizer=dict(type='SGD', lr=1e6))))
    advice = tool.restart_advice(args, cfg, error)
    assert advice.startswith('To restart from scratch with a fresh '
                             'optimizer and schedule, run: `')
    assert advice.endswith('` replacing NEW_LR with a learning rate below '
                           '1e+06, the configured one.')


@pytest.mark.heavy
class TestDivergedDemoRestart:
    """The issue's run: the demo distillation at lr=1e6 diverges at
    iteration 2; its printed command, run as printed with a new learning
    rate, trains 20 finite iterations at that rate."""

    def test_printed_command_works(self, tmp_path):
        from mmengine.registry import init_default_scope
        from mmengine.runner import save_checkpoint

        from mmdist.registry import MODELS
        from mmdist.testing import make_coco_detection
        data = tmp_path / 'coco'
        make_coco_detection(
            str(data),
            num_train=8,
            num_val=2,
            size=(128, 128),
            max_objects=6,
            seed=0,
            clutter=False,
            occlusion=False)
        init_default_scope('mmdet')
        teacher = MODELS.build(
            Config.fromfile(str(REPO / 'configs/demo/det_teacher.py')).model)
        teacher.init_weights()
        save_checkpoint(teacher.state_dict(), str(tmp_path / 'teacher.pth'))
        work = tmp_path / 'work'
        ann = data / 'annotations' / 'instances_val2017.json'
        proc = subprocess.run([
            sys.executable, 'tools/train.py',
            'configs/demo/det_student_dist.py', '--work-dir',
            str(work), '--cfg-options',
            f'model.teacher_ckpt={tmp_path}/teacher.pth',
            f'train_dataloader.dataset.data_root={data}/',
            f'val_dataloader.dataset.data_root={data}/',
            f'val_evaluator.ann_file={ann}', 'train_dataloader.batch_size=2',
            'optim_wrapper.optimizer.lr=1e6', 'train_cfg.max_iters=20',
            'default_hooks.checkpoint.interval=1',
            'default_hooks.logger.interval=1'
        ],
                              cwd=REPO,
                              capture_output=True,
                              text=True,
                              timeout=300)
        assert proc.returncode == 1, proc.stderr[-3000:]
        (line, ) = [
            x for x in proc.stderr.splitlines()
            if x.startswith('mmdist.engine.divergence.'
                            'TrainingDiverged: ')
        ]
        # iter_1.pth is finite but was written by the first step at
        # lr 1e5: described, not advised.
        assert re.search(
            rf'{work}/iter_1\.pth \(after iteration 1\) was written after '
            r'the divergence began \(finite weights, largest \|value\| '
            r'[0-9.]+e\+0[4-9] .*the loss computed from its weights at '
            r'iteration 2 was nan\): .*do not resume from it\. No '
            rf'checkpoint left in {work} predates the divergence', line), line
        assert '--resume' not in line
        command = re.search(
            r'To restart from scratch with a fresh optimizer '
            r'and schedule, run: `([^`]+)` replacing NEW_LR '
            r'with a learning rate below 1e\+06', line)
        assert command, line
        argv = shlex.split(command.group(1).replace('NEW_LR', '2e-3'))
        proc = subprocess.run(
            argv, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (log, ) = (tmp_path / 'work_restart').glob('*/*.log')
        iters = re.findall(
            r'Iter\(train\) \[\s*(\d+)/20\]\s+lr: (\S+) .* '
            r'loss: (\S+) ', log.read_text())
        assert [int(i) for i, _, _ in iters] == list(range(1, 21))
        # The demo schedule warms up from a tenth of the new lr.
        assert float(iters[0][1]) == pytest.approx(2e-4)
        assert all(2e-4 <= float(lr) <= 2e-3 for _, lr, _ in iters)
        assert all(math.isfinite(float(loss)) for _, _, loss in iters)
        dumped = Config.fromfile(
            str(tmp_path / 'work_restart' / 'det_student_dist.py'))
        assert dumped.optim_wrapper.optimizer.lr == 2e-3
