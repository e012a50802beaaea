import sys

from telescope.cli import main

sys.exit(main())
