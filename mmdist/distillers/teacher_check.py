"""Make a teacher that sees the wrong input obvious in the first minute.

A teacher fed pixels it was not trained on (another normalisation, BGR for
RGB) still produces confident logits, and the loss trains the student towards
them without complaint. Its accuracy on the training batch tells at once: for
the first iterations of a run the distiller logs ``teacher_acc`` and warns
when it is no better than always answering the batch's most frequent label.

Classification (``gt_label``) uses top-1; segmentation (``gt_sem_seg``) pixel
accuracy at the logits' resolution, ignoring ``ignore_index``. Detection has
no per-row label to compare with and is not checked.
"""
import logging
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import Tensor


def _labels(logits: Tensor, data_samples: list,
            ignore_index: int) -> Optional[Tuple[Tensor, Tensor]]:
    """(predicted, true) labels of the valid rows, or None if unknown."""
    first = data_samples[0]
    if logits.dim() == 2 and hasattr(first, 'gt_label'):
        labels = [s.gt_label.reshape(-1) for s in data_samples]
        if len(labels) != logits.shape[0] or any(label.numel() != 1
                                                 for label in labels):
            return None  # multi-label or batch-augmented (mixup) labels
        return logits.argmax(dim=1), torch.cat(labels).to(logits.device)
    if logits.dim() == 4 and hasattr(first, 'gt_sem_seg'):
        labels = torch.stack([s.gt_sem_seg.data for s in data_samples])
        labels = F.interpolate(
            labels.to(logits.device).float(),
            size=logits.shape[2:],
            mode='nearest')[:, 0].long()
        valid = labels != ignore_index
        return logits.argmax(dim=1)[valid], labels[valid]
    return None


def batch_accuracy(logits: Tensor,
                   data_samples: Optional[list],
                   ignore_index: int = 255) -> Optional[Tuple[float, float]]:
    """Accuracy of ``logits`` on the batch and the majority-label baseline.

    Args:
        logits (Tensor): ``(N, C)`` classifier or ``(N, C, H, W)``
            segmentation logits.
        data_samples (list, optional): The batch's data samples.
        ignore_index (int): Segmentation label to leave out.

    Returns:
        tuple[float, float] | None: ``(accuracy, baseline)``, where the
        baseline is the share of the batch's most frequent label; None when
        the batch carries no comparable labels (e.g. detection).
    """
    if not data_samples:
        return None
    pair = _labels(logits, data_samples, ignore_index)
    if pair is None or pair[1].numel() == 0:
        return None
    predicted, labels = pair
    accuracy = (predicted == labels).float().mean().item()
    baseline = torch.bincount(labels).max().item() / labels.numel()
    return accuracy, baseline


class TeacherCheck:
    """Log the teacher's training-batch accuracy for the first iterations
    and warn once if it stays near chance.

    Args:
        iterations (int): Iterations to check (0 switches the check off).
        margin (float): Warn when the mean accuracy is below ``margin`` times
            the mean majority-label baseline. Defaults to 1.5.
    """

    def __init__(self, iterations: int = 50, margin: float = 1.5) -> None:
        self.iterations = iterations
        self.margin = margin
        self.seen = 0
        self.accuracies: List[float] = []
        self.baselines: List[float] = []

    @property
    def active(self) -> bool:
        return self.seen < self.iterations

    def update(self,
               logits: Tensor,
               data_samples: Optional[list],
               ignore_index: int = 255) -> Optional[float]:
        """Account one training step; return the teacher's accuracy or None.
        """
        self.seen += 1
        result = batch_accuracy(logits, data_samples, ignore_index)
        if result is not None:
            self.accuracies.append(result[0])
            self.baselines.append(result[1])
        if self.seen == self.iterations and self.accuracies:
            self._report()
        return None if result is None else result[0]

    def _report(self) -> None:
        accuracy = sum(self.accuracies) / len(self.accuracies)
        baseline = sum(self.baselines) / len(self.baselines)
        summary = (f'teacher accuracy on the first {self.seen} training '
                   f'batches: {accuracy:.1%} (always answering the most '
                   f'frequent label of each batch: {baseline:.1%})')
        if accuracy < self.margin * baseline:
            print_log(
                summary + '. The teacher is no better than chance on the '
                'data it distils: it probably sees inputs it was not trained '
                'on (check its data_preprocessor: mean/std, to_rgb/bgr_to_rgb)'
                ' or its checkpoint does not match its config.',
                logger='current',
                level=logging.WARNING)
        else:
            print_log(summary, logger='current')
