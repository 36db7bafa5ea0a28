"""Declares ``twistd jkg``; imports nothing heavy so the reactor stays unchosen."""
from twisted.application.service import ServiceMaker

jkg = ServiceMaker(
    "jkg",
    "jkg.tap",
    "A Jupyter kernel gateway: kernels over REST and WebSocket",
    "jkg",
)
