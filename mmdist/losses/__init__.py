from .dist import DISTLoss, dist_terms
from .feature import FeatureMSELoss
from .kd import KDLoss, kd_divergence

__all__ = [
    'DISTLoss', 'KDLoss', 'FeatureMSELoss', 'dist_terms', 'kd_divergence'
]
