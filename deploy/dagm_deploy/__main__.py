import sys

from dagm_deploy.cli import main

sys.exit(main())
