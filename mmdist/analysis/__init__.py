from .discrepancy import measure_discrepancy

__all__ = ['measure_discrepancy']
