"""Every implementation of a jkg contract, real or fake, provides it (zope.interface's verifyObject)."""
from jupyter_client.manager import AsyncKernelManager
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from jkg.auth.realm import ANONYMOUS_TENANT, DEFAULT, ITenant, Tenant
from jkg.config import GatewayConfig
from jkg.interfaces import (IAttachedKernel, IKernel, IKernelChannels, IKernelClient, IKernelRegistry,
                            ILaunchedKernel)
from jkg.kernels.channels import KernelChannels
from jkg.kernels.external import ExternalKernel
from jkg.kernels.kernel import ManagedKernel
from jkg.kernels.launcher import LaunchedKernel
from jkg.kernels.zmtp import make_factory
from jkg.notebook_http.runner import KernelRunner
from jkg.testing import (AnsweringChannels, FakeChannels, FakeKernel, FakeLaunchedKernel, FakeRegistry,
                         InMemoryTokenChecker, RecordingClient)
from jkg.web.channels import ChannelsFactory

INFO = {"transport": "tcp", "ip": "127.0.0.1", "key": b"k", "signature_scheme": "hmac-sha256",
        **{f"{name}_port": 1 for name in ("shell", "iopub", "stdin", "control", "hb")}}


def test_the_fakes_keep_the_contracts():
    assert verifyObject(IKernelRegistry, FakeRegistry())
    assert verifyObject(IAttachedKernel, FakeKernel())
    assert verifyObject(IKernel, FakeKernel())
    assert verifyObject(IKernelChannels, FakeChannels())
    assert verifyObject(IKernelChannels, AnsweringChannels())
    assert verifyObject(ILaunchedKernel, FakeLaunchedKernel())
    assert verifyObject(IKernelClient, RecordingClient())
    assert verifyObject(ICredentialsChecker, InMemoryTokenChecker({}))


def test_the_real_implementations_keep_the_contracts():
    reactor = MemoryReactorClock()  # the connections register with it and get nowhere
    zmq = make_factory(reactor)
    channels = KernelChannels(zmq, INFO, lambda messages: None)
    try:
        assert verifyObject(IKernelChannels, channels)
    finally:
        zmq.shutdown()
    assert verifyObject(ILaunchedKernel, LaunchedKernel(AsyncKernelManager()))
    assert verifyObject(ILaunchedKernel, ExternalKernel(INFO, Clock()))
    kernel = ManagedKernel("k", "python3", FakeLaunchedKernel(), FakeChannels, Clock(), 1000)
    assert verifyObject(IAttachedKernel, kernel)
    for tenant in (ANONYMOUS_TENANT, DEFAULT, Tenant("alice", max_kernels=2, named=True)):
        assert verifyObject(ITenant, tenant)
    registry = FakeRegistry()
    fake = FakeKernel()
    registry.kernels[fake.id] = fake
    assert verifyObject(IKernelClient, ChannelsFactory(registry, GatewayConfig(), Clock()).build(fake.id, "s"))
    assert verifyObject(IKernelClient, KernelRunner(registry, fake.id))


def test_channels_are_labelled_with_the_kernel_id_the_kernel_passes():
    """``connect(connection_info, on_messages, label)``: logs name the kernel by its id, else by its shell address."""
    kernel = ManagedKernel("k1", "python3", FakeLaunchedKernel(), FakeChannels, Clock(), 1000)
    assert kernel.channels.label == "k1"
    zmq = make_factory(MemoryReactorClock())
    try:
        assert KernelChannels(zmq, INFO, lambda messages: None, label="k1").label == "k1"
        assert KernelChannels(zmq, INFO, lambda messages: None).label == "tcp://127.0.0.1:1"
    finally:
        zmq.shutdown()
