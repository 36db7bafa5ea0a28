"""``python -m jkg.client``: see :mod:`jkg.client.cli`."""
import sys

from .cli import main

sys.exit(main())
