from .offline import strip_pretrained
from .synthetic import (SHAPES, make_cityscapes, make_coco_detection,
                        make_image_folders)

__all__ = [
    'SHAPES', 'make_coco_detection', 'make_cityscapes', 'make_image_folders',
    'strip_pretrained'
]
