"""``make gpu-check``: what one CUDA machine must show before the paper-scale study runs on it.

``main`` (rankscope/gpu_check/main.py) runs the checks of ``checks.py`` and writes one JSON plus a table
(``output.py``); the bf16 GEMM ceiling it measures MFU against is ``ceiling.py``. Without CUDA it prints
one line and exits 0.
"""
