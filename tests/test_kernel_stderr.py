"""The pipes jkg reads kernels' stderr from: kept readable across gateways, drained when closed."""
import os

from twisted.internet.testing import MemoryReactor

from jkg.kernels.stderr import StderrTail, kernel_output_pipe, reopen_kernel_output
from jkg.kernels.store import KernelRecord
from jkg.procfs import open_pipe_of


def test_the_kernel_end_keeps_the_pipe_writable_when_the_gateway_lets_go():
    kernel_end, reader = kernel_output_pipe()
    try:
        inode = os.fstat(reader.fileno()).st_ino
        reader.close()  # the gateway exits
        os.write(kernel_end, b"written with no gateway\n")  # a write-only end raises BrokenPipeError here
        again = reopen_kernel_output(os.getpid(), inode)  # the next gateway, by the recorded inode
        assert again is not None
        with again:
            assert again.read(100) == b"written with no gateway\n"
    finally:
        os.close(kernel_end)


def test_only_the_recorded_pipe_is_opened():
    kernel_end, reader = kernel_output_pipe()
    other_end, other_reader = kernel_output_pipe()
    try:
        inode = os.fstat(reader.fileno()).st_ino
        assert reopen_kernel_output(os.getpid(), inode + 10**9) is None
        os.write(other_end, b"not this one")
        os.write(kernel_end, b"this one")
        again = reopen_kernel_output(os.getpid(), inode)
        with again:
            assert again.read(100) == b"this one"
        assert open_pipe_of(2**22 + 12345, inode, os.O_RDONLY) is None  # no such process
    finally:
        for handle in (reader, other_reader):
            handle.close()
        os.close(kernel_end)
        os.close(other_end)


def test_the_tail_reads_what_is_left_when_closed():
    kernel_end, reader = kernel_output_pipe()
    reactor = MemoryReactor()
    echoed = bytearray()

    class Echo:
        def write(self, data):
            echoed.extend(data)

        def flush(self):
            pass

    tail = StderrTail(reactor, reader, echo=Echo())
    assert tail in reactor.getReaders()
    os.write(kernel_end, b"first line\n")
    tail.doRead()
    os.write(kernel_end, b"Traceback: the last words\n")  # written, never signalled as readable
    os.close(kernel_end)
    tail.close()
    assert tail not in reactor.getReaders()
    assert tail.tail() == "first line\nTraceback: the last words"
    assert echoed == b"first line\nTraceback: the last words\n"
    assert reader.closed


def test_records_from_other_versions_load():
    saved = KernelRecord(id="k", name="python3", owner=None, connection_info={}, pid=1, stderr_inode=42).to_json()
    assert KernelRecord.from_json(saved).stderr_inode == 42
    older = saved.replace(', "stderr_inode": 42', "")
    assert KernelRecord.from_json(older).stderr_inode is None
    newer = saved.replace('"stderr_inode": 42', '"stderr_inode": 42, "from_a_later_jkg": 1')
    assert KernelRecord.from_json(newer).pid == 1
