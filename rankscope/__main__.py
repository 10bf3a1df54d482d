"""``python -m rankscope`` (and ``torchrun -m rankscope train ...``)."""

from rankscope.cli import main

main()
