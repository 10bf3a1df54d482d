"""Run the GPU check (``make gpu-check``): see rankscope/gpu_check/main.py for what it does.

    python scripts/gpu_check.py --out gpu_check          # JSON + table in gpu_check/
"""

import sys

from rankscope.gpu_check.main import main

if __name__ == "__main__":
    sys.exit(main())
