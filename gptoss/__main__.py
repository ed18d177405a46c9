import sys

from gptoss.cli import main

sys.exit(main())
