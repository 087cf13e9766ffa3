"""The demo pipeline at a tiny size, and the synthetic data generators."""
import json
import math

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from helpers import run_tool
from mmdist.testing import make_cityscapes, make_coco_detection


def test_coco_generator_gives_valid_coco(tmp_path):
    paths = make_coco_detection(str(tmp_path), num_train=6, num_val=2,
                                size=(96, 64), seed=3)
    coco = COCO(paths['train2017'])
    assert len(coco.getImgIds()) == 6
    assert len(coco.getCatIds()) == 5
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and all(a['bbox'][2] > 0 and a['bbox'][3] > 0 for a in anns)
    for ann in anns:
        x, y, w, h = ann['bbox']
        assert x >= 0 and y >= 0 and x + w <= 96 and y + h <= 64
    again = make_coco_detection(str(tmp_path / 'again'), num_train=6,
                                num_val=2, size=(96, 64), seed=3)
    assert json.load(open(again['train2017'])) == json.load(
        open(paths['train2017']))


def test_cityscapes_generator_gives_valid_label_maps(tmp_path):
    make_cityscapes(str(tmp_path), num_train=3, num_val=1, size=(64, 32))
    labels = sorted((tmp_path / 'gtFine' / 'train').rglob(
        '*_gtFine_labelTrainIds.png'))
    images = sorted((tmp_path / 'leftImg8bit' / 'train').rglob(
        '*_leftImg8bit.png'))
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
    out = run_tool('demo.py', '--iters', 2, '--images', 8, '--work-dir', work)
    assert 'student + DIST' in out.stdout
    report = json.load(open(work / 'report.json'))
    for task in ('det', 'seg'):
        results = report[task]['results']
        for variant in ('teacher', 'student', 'kd', 'dist'):
            assert math.isfinite(results[variant]['metric'])
            assert results[variant]['train_seconds'] > 0
        for variant in ('student', 'kd', 'dist'):
            assert math.isfinite(results[variant]['kl'])
            assert -1 <= results[variant]['pearson'] <= 1
        assert results['dist']['losses']['loss_dist']
        assert results['kd']['losses']['loss_kd']
        # Validation points at the iteration they were measured at.
        steps = [step for step, _ in results['dist']['curve']]
        assert steps and steps[-1] == 2, (task, steps)
        for plot in report[task]['plots']:
            assert (work / plot.split('/')[-1]).stat().st_size > 1000
    assert (work / 'report.md').read_text().count('| teacher |') == 2
