import sys

from ssmis.cli import main

sys.exit(main())
