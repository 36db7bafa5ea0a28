"""jkg: a Jupyter kernel gateway built on Twisted.

Kept import-light on purpose: importing ``jkg`` must not import the reactor,
so that ``twistd jkg`` can still install the asyncio reactor.
"""
__version__ = "0.1.0"
