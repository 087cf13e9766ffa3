"""Synthetic data sets in the real on-disk layouts (no download needed).

- COCO detection: ``annotations/instances_{train,val}2017.json`` and
  ``{train,val}2017/*.jpg``;
- Cityscapes segmentation: ``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png``
  and ``gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png``;
- ImageNet-style classification folders: ``{train,val}/<class>/*.JPEG``.

Images hold several kinds of shapes in random colours and sizes over a
noisy background, by default with clutter strokes and partial occlusion, so
that the class is given by the shape, not by a colour, and a bigger model
has something to gain. Every generator is deterministic for a given seed.
"""
import json
import os
import os.path as osp
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ('square', 'circle', 'triangle', 'cross', 'ring')
# Cityscapes train ids given to the shapes, and background stripes.
CITYSCAPES_SHAPE_IDS = (13, 11, 7, 5, 18)  # car, person, traffic sign...
CITYSCAPES_BACKGROUND_IDS = (10, 2, 8, 0)  # sky, building, vegetation, road


def _random_colour(rng: np.random.Generator) -> Tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(30, 256, size=3))


def _background(rng: np.random.Generator,
                width: int,
                height: int,
                clutter: bool = True) -> Image.Image:
    """Noisy gradient, with faint clutter strokes if ``clutter``."""
    base = rng.integers(0, 90, size=3)
    ramp = np.linspace(0, 60, width)[None, :, None]
    pixels = base[None, None, :] + ramp + rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8)) if clutter else 0):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = rng.integers(0, width), rng.integers(0, height)
        draw.line([(int(x0), int(y0)), (int(x1), int(y1))],
                  fill=_random_colour(rng),
                  width=int(rng.integers(1, 4)))
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: Sequence[int],
                fill) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if kind == 'square':
        draw.rectangle(box, fill=fill)
    elif kind == 'circle':
        draw.ellipse(box, fill=fill)
    elif kind == 'triangle':
        draw.polygon([(x0 + w // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif kind == 'cross':
        draw.rectangle([x0 + w // 3, y0, x1 - w // 3, y1], fill=fill)
        draw.rectangle([x0, y0 + h // 3, x1, y1 - h // 3], fill=fill)
    elif kind == 'ring':
        draw.ellipse(box, fill=fill)  # _render cuts the hole
    else:
        raise ValueError(f'unknown shape {kind!r}')


def _overlaps(box: Sequence[int],
              others: Sequence[Tuple[str, Sequence[int]]]) -> bool:
    """Whether ``box`` shares a pixel with the box of any of ``others``."""
    # PIL draws both corners of a box, so boxes with equal edges share pixels.
    return any(
        box[0] <= o[2] and o[0] <= box[2] and box[1] <= o[3] and o[1] <= box[3]
        for _, o in others)


def _place_objects(rng: np.random.Generator,
                   width: int,
                   height: int,
                   count: int,
                   occlusion: bool = True) -> List[Tuple[str, List[int]]]:
    """Random shapes and their boxes.

    Args:
        rng (np.random.Generator): Random source.
        width (int): Image width.
        height (int): Image height.
        count (int): Shapes to place.
        occlusion (bool): Let boxes overlap. Without it, a shape that finds
            no free place in 20 tries is left out.

    Returns:
        list[tuple[str, list[int]]]: ``(shape, [x0, y0, x1, y1])`` in
        drawing order (corners inclusive).
    """
    objects = []
    for _ in range(count):
        for _attempt in range(1 if occlusion else 20):
            kind = SHAPES[int(rng.integers(len(SHAPES)))]
            size = int(
                rng.integers(
                    max(8,
                        min(width, height) // 8),
                    max(12,
                        min(width, height) // 2.5)))
            aspect = float(rng.uniform(0.7, 1.4))
            w = max(6, int(size * aspect))
            h = max(6, int(size / aspect))
            x0 = int(rng.integers(0, max(1, width - w)))
            y0 = int(rng.integers(0, max(1, height - h)))
            box = [x0, y0, min(width, x0 + w), min(height, y0 + h)]
            if occlusion or not _overlaps(box, objects):
                objects.append((kind, box))
                break
    return objects


def _render(rng: np.random.Generator, width: int, height: int, objects,
            background: Image.Image):
    """Draw objects in order (later ones occlude earlier ones).

    Returns:
        tuple: RGB image and an int map of the object index per pixel
        (-1 for background).
    """
    image = background.copy()
    index_map = Image.new('I', (width, height), -1)
    draw = ImageDraw.Draw(image)
    draw_index = ImageDraw.Draw(index_map)
    for i, (kind, box) in enumerate(objects):
        colour = _random_colour(rng)
        _draw_shape(draw, kind, box, colour)
        _draw_shape(draw_index, kind, box, i)
        if kind == 'ring':
            x0, y0, x1, y1 = box
            w, h = x1 - x0, y1 - y0
            hole = [x0 + w // 4, y0 + h // 4, x1 - w // 4, y1 - h // 4]
            draw.ellipse(
                hole,
                fill=tuple(
                    int(c) for c in background.getpixel((hole[0], hole[1]))))
            draw_index.ellipse(hole, fill=-1)
    return image, np.array(index_map, dtype=np.int32)


def make_coco_detection(root: str,
                        num_train: int = 16,
                        num_val: int = 8,
                        size: Tuple[int, int] = (160, 120),
                        max_objects: int = 5,
                        seed: int = 0,
                        clutter: bool = True,
                        occlusion: bool = True) -> dict:
    """Write a COCO-layout detection data set with ``len(SHAPES)`` classes.

    Boxes are the visible extent of each object after occlusion; objects
    hidden almost entirely are left out.

    Args:
        root (str): Output folder.
        num_train (int): Training images.
        num_val (int): Validation images.
        size (tuple[int, int]): Image (width, height).
        max_objects (int): Most objects per image (at least one).
        seed (int): Random seed.
        clutter (bool): Draw clutter strokes on the background.
        occlusion (bool): Let objects overlap (and hide each other).

    Returns:
        dict: ``classes`` and the paths of the two annotation files.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(SHAPES)]
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    paths = {}
    for split, count in (('train2017', num_train), ('val2017', num_val)):
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            objects = _place_objects(rng, width, height,
                                     int(rng.integers(1, max_objects + 1)),
                                     occlusion)
            image, index_map = _render(
                rng, width, height, objects,
                _background(rng, width, height, clutter))
            name = f'{image_id:06d}.jpg'
            image.save(osp.join(root, split, name), quality=95)
            images.append(
                dict(id=image_id, file_name=name, width=width, height=height))
            for i, (kind, _) in enumerate(objects):
                ys, xs = np.nonzero(index_map == i)
                if len(xs) < 16:
                    continue
                x0, y0 = int(xs.min()), int(ys.min())
                w, h = int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1
                annotations.append(
                    dict(
                        id=len(annotations) + 1 + image_id * 1000,
                        image_id=image_id,
                        category_id=SHAPES.index(kind) + 1,
                        bbox=[x0, y0, w, h],
                        area=float(len(xs)),
                        iscrowd=0))
        path = osp.join(root, 'annotations', f'instances_{split}.json')
        with open(path, 'w') as f:
            json.dump(
                dict(
                    images=images,
                    annotations=annotations,
                    categories=categories), f)
        paths[split] = path
    return dict(classes=SHAPES, **paths)


def make_cityscapes(root: str,
                    num_train: int = 8,
                    num_val: int = 4,
                    size: Tuple[int, int] = (128, 64),
                    max_objects: int = 6,
                    ignore_fraction: float = 0.02,
                    seed: int = 0) -> dict:
    """Write a Cityscapes-layout segmentation set with labelTrainIds maps.

    Background stripes (sky, building, vegetation, road) lie under shapes
    labelled with other train ids; a thin border is 255 (ignored), as the
    ego-vehicle and unlabelled areas are in Cityscapes.

    Args:
        root (str): Output folder.
        num_train (int): Training images.
        num_val (int): Validation images.
        size (tuple[int, int]): Image (width, height).
        max_objects (int): Most shapes per image.
        ignore_fraction (float): Height fraction of the ignored bottom band.
        seed (int): Random seed.

    Returns:
        dict: The data root and the number of images per split.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    for split, count in (('train', num_train), ('val', num_val)):
        img_dir = osp.join(root, 'leftImg8bit', split, 'synth')
        ann_dir = osp.join(root, 'gtFine', split, 'synth')
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for index in range(count):
            background = _background(rng, width, height)
            labels = np.zeros((height, width), dtype=np.uint8)
            bounds = np.sort(
                rng.integers(
                    height // 6,
                    height,
                    size=len(CITYSCAPES_BACKGROUND_IDS) - 1))
            edges = [0, *bounds.tolist(), height]
            for band, train_id in enumerate(CITYSCAPES_BACKGROUND_IDS):
                top, bottom = edges[band], edges[band + 1]
                labels[top:bottom] = train_id
                tint = tuple(int(v) for v in rng.integers(0, 120, size=3))
                region = np.array(background)[top:bottom]
                region = np.clip(region * 0.6 + np.array(tint) * 0.4, 0, 255)
                background.paste(
                    Image.fromarray(region.astype(np.uint8)), (0, top))
            objects = _place_objects(rng, width, height,
                                     int(rng.integers(1, max_objects + 1)))
            image, index_map = _render(rng, width, height, objects, background)
            for i, (kind, _) in enumerate(objects):
                labels[index_map == i] = CITYSCAPES_SHAPE_IDS[SHAPES.index(
                    kind)]
            band = max(1, int(round(height * ignore_fraction)))
            labels[-band:] = 255
            name = f'synth_{index:06d}_000019'
            image.save(osp.join(img_dir, f'{name}_leftImg8bit.png'))
            Image.fromarray(labels).save(
                osp.join(ann_dir, f'{name}_gtFine_labelTrainIds.png'))
    return dict(root=root, num_train=num_train, num_val=num_val)


def make_image_folders(root: str,
                       num_train_per_class: int = 8,
                       num_val_per_class: int = 4,
                       size: int = 64,
                       seed: int = 0) -> dict:
    """Write ImageNet-style class folders, one class per shape.

    Args:
        root (str): Output folder with ``train/`` and ``val/``.
        num_train_per_class (int): Training images per class.
        num_val_per_class (int): Validation images per class.
        size (int): Square image side.
        seed (int): Random seed.

    Returns:
        dict: ``classes`` in folder order.
    """
    rng = np.random.default_rng(seed)
    for split, count in (('train', num_train_per_class), ('val',
                                                          num_val_per_class)):
        for kind in SHAPES:
            folder = osp.join(root, split, kind)
            os.makedirs(folder, exist_ok=True)
            for index in range(count):
                side = int(rng.integers(size // 3, size - 4))
                x0 = int(rng.integers(0, size - side))
                y0 = int(rng.integers(0, size - side))
                clutter = _place_objects(rng, size, size,
                                         int(rng.integers(0, 3)))
                image, _ = _render(
                    rng, size, size,
                    clutter + [(kind, [x0, y0, x0 + side, y0 + side])],
                    _background(rng, size, size))
                image.save(osp.join(folder, f'{index:05d}.JPEG'), quality=95)
    return dict(classes=SHAPES)
