"""The trained-teacher GPU check, run on the CPU.

``.dev_scripts/trained_teacher_gpu.py export`` traces a demo teacher into
plain torch layers, ``gpu_check.py``'s trained-teacher part runs it in its
forms (here on the CPU) and ``evaluate`` post-processes the outputs with the
stock head and evaluator. Checked here: the traced module unpickles without
OpenMMLab, the post-processed fp32 outputs are exactly the predictions the
teacher's own ``predict`` makes on the same images, and ``evaluate`` scores
every form the check wrote.
"""
import argparse
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from helpers import REPO


def _tool(name, path):
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('task', ['det', 'seg'])
def test_traced_teacher_predicts_what_the_teacher_predicts(task, tmp_path):
    demo = _tool('demo', 'tools/misc/demo.py')
    tool = _tool('trained_teacher_gpu', '.dev_scripts/trained_teacher_gpu.py')
    gpu_check = _tool('gpu_check', '.dev_scripts/gpu_check.py')
    root, _ = demo.make_data(task, str(tmp_path / 'data'), 4)
    cfg = demo.demo_config(
        task, 'dist', root, str(tmp_path / 'work'), 2, teacher_ckpt=None)
    config = str(tmp_path / 'config.py')
    cfg.dump(config)
    assets, out = tmp_path / 'assets', tmp_path / 'out'
    out.mkdir()
    # A random teacher (no checkpoint): the same seed builds the same one.
    torch.manual_seed(0)
    tool.export(
        argparse.Namespace(
            config=config,
            name='t',
            out_dir=str(assets),
            checkpoint=None,
            split='test'))
    # The GPU machine has no OpenMMLab: the saved module must not need it.
    code = ('import sys\n'
            "for m in ('mmdist', 'mmengine', 'mmdet', 'mmseg', 'mmcv'):\n"
            '    sys.modules[m] = None\n'
            'import torch\n'
            f"d = torch.load({str(assets / 't.pt')!r}, weights_only=False)\n"
            "d['module'](d['images'][:1])\n")
    subprocess.run([sys.executable, '-c', code], check=True)

    rows = gpu_check.trained_teachers(str(assets), 'cpu', 1, 0, str(out))
    assert {'t fp32 strict', 't fast bf16'} <= set(rows)
    saved = torch.load(out / 't.fp32_strict.out.pt', weights_only=True)

    torch.manual_seed(0)
    cfg, _, teacher, head, loader = tool.teacher_and_loader(
        config, None, 'test')
    data = tool.batches(teacher, loader)

    def stock_predictions():
        with torch.no_grad():
            for _, inputs, samples in data:
                yield teacher.predict(inputs, [s.clone() for s in samples])

    # The stock evaluator on the teacher's own predictions: what evaluate
    # must report for fp32.
    evaluator = tool.Runner.build_evaluator(None, cfg.test_evaluator)
    evaluator.dataset_meta = loader.dataset.metainfo
    for predicted in stock_predictions():
        evaluator.process(data_samples=predicted, data_batch=None)
    stock_metrics = evaluator.evaluate(sum(len(i) for i, _, _ in data))

    # Prediction by prediction; a random detector scores below the config's
    # threshold, so keep every box to have some to compare.
    if task == 'det':
        teacher.bbox_head.test_cfg.score_thr = 0.
    ours = [
        s for batch in tool.predictions(teacher, head, data, saved['outputs'])
        for s in batch
    ]
    stock = [s for batch in stock_predictions() for s in batch]
    assert len(ours) == len(stock) == sum(len(i) for i, _, _ in data)
    for a, b in zip(ours, stock):
        if task == 'det':
            for key in ('bboxes', 'scores', 'labels'):
                assert torch.equal(a.pred_instances[key],
                                   b.pred_instances[key]), key
        else:
            assert torch.equal(a.pred_sem_seg.data, b.pred_sem_seg.data)
    if task == 'det':
        assert sum(len(s.pred_instances) for s in ours) > 0

    report = tmp_path / 'report.json'
    tool.evaluate(
        argparse.Namespace(
            config=config,
            name='t',
            outputs_dir=str(out),
            checkpoint=None,
            split='test',
            json=str(report)))
    forms = json.loads(report.read_text())['forms']
    assert set(forms) == {'fp32 strict', 'fast bf16'}
    assert forms['fp32 strict']['metrics'] == pytest.approx({
        k: float(v)
        for k, v in stock_metrics.items()
    })
