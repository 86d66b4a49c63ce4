import sys

from amylum.cli import main

sys.exit(main())
