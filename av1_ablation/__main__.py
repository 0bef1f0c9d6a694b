import sys

from av1_ablation.cli import main

sys.exit(main())
