"""The demo pipeline at a tiny size, and the synthetic data generators."""
import argparse
import json
import math

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from helpers import REPO, run_tool
from mmdist.testing import make_cityscapes, make_coco_detection


def _demo_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'demo', REPO / 'tools' / 'misc' / 'demo.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coco_generator_gives_valid_coco(tmp_path):
    paths = make_coco_detection(
        str(tmp_path), num_train=6, num_val=2, size=(96, 64), seed=3)
    coco = COCO(paths['train2017'])
    assert len(coco.getImgIds()) == 6
    assert len(coco.getCatIds()) == 5
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and all(a['bbox'][2] > 0 and a['bbox'][3] > 0 for a in anns)
    for ann in anns:
        x, y, w, h = ann['bbox']
        assert x >= 0 and y >= 0 and x + w <= 96 and y + h <= 64
    again = make_coco_detection(
        str(tmp_path / 'again'), num_train=6, num_val=2, size=(96, 64), seed=3)
    assert json.load(open(again['train2017'])) == json.load(
        open(paths['train2017']))


def _overlap(anns) -> bool:
    boxes = [a['bbox'] for a in anns]
    return any(x < u + p and u < x + w and y < v + q and v < y + h
               for i, (x, y, w, h) in enumerate(boxes)
               for (u, v, p, q) in boxes[i + 1:])


def test_coco_generator_without_occlusion_or_clutter(tmp_path):
    paths = make_coco_detection(
        str(tmp_path),
        num_train=20,
        num_val=2,
        size=(128, 128),
        max_objects=6,
        seed=1,
        clutter=False,
        occlusion=False)
    coco = COCO(paths['train2017'])
    anns = [coco.loadAnns(coco.getAnnIds(i)) for i in coco.getImgIds()]
    assert sum(len(a) > 2 for a in anns) > 0
    assert not any(_overlap(a) for a in anns)
    # By default objects may overlap (and hide each other).
    default = COCO(
        make_coco_detection(
            str(tmp_path / 'default'),
            num_train=20,
            num_val=2,
            size=(128, 128),
            max_objects=6,
            seed=1)['train2017'])
    assert any(
        _overlap(default.loadAnns(default.getAnnIds(image_id)))
        for image_id in default.getImgIds())


def test_demo_statistics_and_spread_verdict():
    demo = _demo_tool()
    mean, std = demo.mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == 1.0
    assert demo.mean_std([0.5]) == (0.5, 0.0)

    def runs(*metrics):
        return [
            dict(
                metric=m,
                train_seconds=1.0,
                iters=2,
                curve=[[1, m / 2], [2, m]],
                loss=[]) for m in metrics
        ]

    results = dict(
        kd=demo.aggregate(runs(0.30, 0.32, 0.31)),
        dist=demo.aggregate(runs(0.40, 0.41, 0.39)),
        student=demo.aggregate(runs(0.10, 0.50, 0.30)))
    assert np.allclose(results['dist']['curve'], [[1, 0.2], [2, 0.4]])
    assert results['dist']['curve_std'][1][1] == pytest.approx(0.01)
    spec = demo.TASKS['det']
    assert 'more than the spread' in demo.compare(results, 'dist', 'kd', spec)
    assert 'within the spread' in demo.compare(results, 'dist', 'student',
                                               spec)
    one = dict(kd=demo.aggregate(runs(0.3)), dist=demo.aggregate(runs(0.4)))
    assert 'one seed' in demo.compare(one, 'dist', 'kd', spec)


def test_demo_regenerates_data_and_retrains_teacher_only_when_asked(
        tmp_path, monkeypatch):
    demo = _demo_tool()
    trained = []

    def fake_train(cfg):  # what the Runner leaves behind, without training
        iters = cfg.train_cfg.max_iters
        scalars = tmp_path / cfg.work_dir / 'ts' / 'vis_data'
        scalars.mkdir(parents=True, exist_ok=True)
        (scalars / 'scalars.json').write_text(
            json.dumps({
                'step': iters,
                'coco/bbox_mAP': iters / 100
            }) + '\n')
        (tmp_path / cfg.work_dir / f'iter_{iters}.pth').write_bytes(b'x')
        trained.append(iters)
        return 1.0

    monkeypatch.setattr(demo, 'train', fake_train)
    monkeypatch.chdir(tmp_path)
    root, tag = demo.make_data('det', 'data', 6)
    images = tmp_path / root / 'train2017'
    assert len(list(images.iterdir())) == 6
    stamp = (tmp_path / root / '.complete').stat().st_mtime_ns
    assert demo.make_data('det', 'data', 6) == (root, tag)  # kept
    assert (tmp_path / root / '.complete').stat().st_mtime_ns == stamp

    def teacher(data_tag, iters, retrain=False):
        args = argparse.Namespace(teacher_iters=iters, retrain_teacher=retrain)
        return demo.train_teacher('det', root, data_tag, 'det', args)

    assert teacher(tag, 4)['metric'] == 0.04 and trained == [4]
    assert teacher(tag, 4)['metric'] == 0.04 and trained == [4]  # reused
    teacher(tag, 8)
    teacher(tag, 4)  # the record says 8 iterations: retrained
    assert trained == [4, 8, 4]
    teacher(tag, 4, retrain=True)
    assert trained == [4, 8, 4, 4]

    # Other data: the folder is regenerated (no image of the old set left)
    # and the teacher, trained on the old data, is trained again.
    root, other = demo.make_data('det', 'data', 3)
    assert other != tag
    assert len(list((tmp_path / root / 'train2017').iterdir())) == 3
    teacher(other, 4)
    assert trained == [4, 8, 4, 4, 4]


def test_cityscapes_generator_gives_valid_label_maps(tmp_path):
    make_cityscapes(str(tmp_path), num_train=3, num_val=1, size=(64, 32))
    labels = sorted(
        (tmp_path / 'gtFine' / 'train').rglob('*_gtFine_labelTrainIds.png'))
    images = sorted(
        (tmp_path / 'leftImg8bit' / 'train').rglob('*_leftImg8bit.png'))
    assert len(labels) == len(images) == 3
    for path in labels:
        label = np.array(Image.open(path))
        assert label.dtype == np.uint8 and label.shape == (32, 64)
        values = set(np.unique(label).tolist())
        assert values <= set(range(19)) | {255}
        assert 255 in values and len(values - {255}) >= 3


@pytest.mark.heavy
def test_demo_pipeline_tiny(tmp_path):
    work = tmp_path / 'demo'
    out = run_tool('misc/demo.py', '--iters', 2, '--teacher-iters', 4,
                   '--images', 8, '--seeds', 2, '--work-dir', work)
    assert 'student + DIST' in out.stdout
    report = json.load(open(work / 'report.json'))
    for task in ('det', 'seg'):
        results = report[task]['results']
        assert len(results['teacher']['seeds']) == 1  # one teacher
        for variant in ('teacher', 'student', 'kd', 'dist'):
            assert math.isfinite(results[variant]['metric'])
            assert results[variant]['train_seconds'] > 0
        for variant in ('student', 'kd', 'dist'):
            seeds = results[variant]['seeds']
            assert len(seeds) == 2
            assert results[variant]['metric'] == pytest.approx(
                np.mean([s['metric'] for s in seeds]))
            assert results[variant]['metric_std'] == pytest.approx(
                np.std([s['metric'] for s in seeds], ddof=1))
            assert math.isfinite(results[variant]['kl'])
            assert -1 <= results[variant]['pearson'] <= 1
            # Each seed trained its own model.
            assert seeds[0]['checkpoint'] != seeds[1]['checkpoint']
        assert results['dist']['loss'] and results['kd']['loss']
        # Validation points at the iteration they were measured at.
        steps = [step for step, _ in results['dist']['curve']]
        assert steps and steps[-1] == 2, (task, steps)
        for plot in report[task]['plots']:
            assert (work / plot.split('/')[-1]).stat().st_size > 1000
    text = (work / 'report.md').read_text()
    assert text.count('| teacher |') == 2
    assert text.count('student + DIST vs student + KD') == 2
    assert text.count('ahead in') == 4
    assert 'mean ± sample std' in text

    # A rerun of one task with the same data and schedule reuses its
    # teacher; the report holds that run only.
    out = run_tool('misc/demo.py', '--task', 'seg', '--iters', 2,
                   '--teacher-iters', 4, '--images', 8, '--work-dir', work)
    assert '[seg] reusing the trained teacher' in out.stdout
    assert set(json.load(open(work /
                              'report.json'))) == {'seg', 'wall_seconds'}
    assert not (work / 'det_val_metric.png').exists()
