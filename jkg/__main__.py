"""``python -m jkg ARGS``: the same as the ``jkg`` console script (``twistd -n --pidfile= jkg ARGS``)."""
from .command import main

main()
