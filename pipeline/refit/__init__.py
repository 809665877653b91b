"""Refit: new weights into a published bundle's TensorRT engines, without rebuilding them."""

from pipeline.refit.workflow import RefitResult, refit_bundle

__all__ = ["RefitResult", "refit_bundle"]
