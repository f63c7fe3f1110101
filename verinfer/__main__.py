import sys

from verinfer.cli import main

sys.exit(main())
