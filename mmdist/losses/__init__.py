from .dist import DISTLoss, dist_terms
from .kd import KDLoss, kd_divergence

__all__ = ['DISTLoss', 'KDLoss', 'dist_terms', 'kd_divergence']
