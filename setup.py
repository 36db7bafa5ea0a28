"""Packaging for jkg.

``twisted.plugins`` is listed as a package (without an ``__init__.py`` in
``twisted/`` or ``twisted/plugins/``) so that a plain ``pip install .`` drops
``jkg_plugin.py`` into Twisted's plugin namespace and ``twistd jkg`` appears.
"""
from setuptools import setup

setup(
    name="jkg",
    version="0.1.0",
    description="A Jupyter kernel gateway built on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    package_data={"jkg": ["openapi.yaml"]},
    packages=["jkg", "jkg.kernels", "jkg.web", "jkg.auth", "jkg.client", "jkg.provisioners", "jkg.sandbox",
              "twisted.plugins"],
    install_requires=[
        "twisted[tls]>=24.7",
        "autobahn>=24.4",
        "pyzmq>=25",
        "orjson>=3.8",
        "msgspec>=0.18",
        "jupyter_client>=8.6",
        "klein>=24.8",
        "service_identity>=24.1",
        "ipykernel>=6.29",
        "bcrypt>=4.1",
        "zope.interface>=6",
        "prometheus_client>=0.20",
        "pyyaml>=6",
        # the reactor's event loop (--event-loop auto): less CPU per wake-up than asyncio's own; no Windows wheels
        "uvloop>=0.19; sys_platform != 'win32'",
    ],
    extras_require={
        "client": ["nbclient>=0.10", "nbformat>=5.9"],
        # benchmarks/ (run by hand): asyncio WebSocket clients, and the profiler used on the gateway
        "bench": ["websockets>=13", "aiohttp>=3.9", "py-spy>=0.3"],
        # Kernels on Docker, Docker Swarm, SSH hosts (and Kubernetes/YARN by configuration): docs/engines.md
        "containers": ["gateway_provisioners[docker]>=0.5,<0.6"],
        "test": [
            "nbclient>=0.10",
            "nbformat>=5.9",
            "pytest>=8",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",  # the suite on two workers (pytest.ini), a module per worker (tests/conftest.py)
            "hypothesis>=6.100",
            "treq>=24.9",
            "websocket-client>=1.8",
            "requests>=2.31",
            "jupyter_server>=2.14,<3",
            "schemathesis>=4",
            "ruff>=0.6",
            "gateway_provisioners[docker]>=0.5,<0.6",
        ],
    },
    entry_points={
        "console_scripts": ["jkg = jkg.command:main"],
        "jupyter_client.kernel_provisioners": [
            "jkg-netns-provisioner = jkg.provisioners.netns:NetnsProvisioner",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Framework :: Jupyter",
        "License :: OSI Approved :: BSD License",
        "Programming Language :: Python :: 3",
    ],
)
