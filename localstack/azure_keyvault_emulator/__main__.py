"""`python -m azure_keyvault_emulator`."""

import sys

from .server import main

sys.exit(main())
