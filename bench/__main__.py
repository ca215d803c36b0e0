"""`python -m bench`: run issue #6's benchmark (see `bench.run`)."""

import sys

from bench.run import main

sys.exit(main())
