import sys

from workermeter.cli import main

sys.exit(main())
