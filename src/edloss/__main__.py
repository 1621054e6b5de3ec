import sys

from edloss.cli import main

sys.exit(main())
