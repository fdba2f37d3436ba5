import sys

from dstack.agent.main import main

sys.exit(main())
