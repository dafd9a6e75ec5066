import sys

from portaft.cli import main

sys.exit(main())
