"""Reduced precisions on the build side: what each one needs and sets, and ModelOpt calibration.

ModelOpt (``nvidia-modelopt``, the ``quant`` extra) is imported only when a quantized precision
is built: importing it takes seconds.
"""
