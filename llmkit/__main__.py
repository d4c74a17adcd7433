"""``python -m llmkit`` is the ``llmkit`` command (handy under ``torchrun -m llmkit train ...``)."""
import sys

from llmkit.cli import main

sys.exit(main())
