"""The seccomp filter of ``network = "none"``: no socket but UNIX ones, as a classic-BPF program.

A private network namespace (``loopback``) still has its own loopback
interface: kernel code can open TCP sockets and talk to itself.  ``none``
takes sockets away altogether: bwrap loads this program (``--seccomp FD``)
into the kernel's process just before it executes the kernel command, and
it is inherited by everything the kernel starts, for good (a seccomp filter
cannot be removed, and bwrap sets ``no_new_privs``).  ``socket()`` with any
address family but ``AF_UNIX`` fails with ``EAFNOSUPPORT`` -- the answer a
program gets on a machine built without that family, so libraries fall back
quietly (``AF_NETLINK`` with ``EOPNOTSUPP``: see below) -- while ``AF_UNIX``
keeps working: the kernel talks to the gateway over ZeroMQ's ``ipc``
transport, and Python's own event loop uses UNIX socket pairs.

Why netlink answers differently: ipykernel binds a ZeroMQ ``tcp://127.0.0.1``
socket at startup (to forward forked children's output), and libzmq first
looks the address up as an interface name with ``getifaddrs()``, which
opens a netlink socket.  libzmq takes ``EOPNOTSUPP`` there as "no such
interface" and aborts the process on any other errno; with it, the bind
fails cleanly (no inet socket) and ipykernel carries on without that pipe.

The program is an allow list on the one call that makes sockets, plus the
ways around a check on a syscall *number*:

* **another syscall table**: on x86_64 a process can enter the kernel
  through ``int 0x80`` with i386 numbers (where ``socketcall`` multiplexes
  ``socket``), or through the x32 ABI (the x86_64 table with bit 30 set in
  the number).  Both are refused by killing the process: a Python kernel
  never uses them, and a filter that only knows native numbers must not
  judge calls from another table.
* **io_uring**: ``IORING_OP_SOCKET`` makes sockets without the ``socket``
  syscall.  ``io_uring_setup`` (and its siblings) fail with ``ENOSYS``, as
  on a kernel without io_uring, so libraries fall back to plain syscalls.

Pure: :func:`network_filter` returns the program's bytes (``struct
sock_filter`` records, native byte order) for a machine from
:data:`ARCHITECTURES`; the provisioner writes them to a memfd for bwrap.
"""
from __future__ import annotations

import errno
import platform
import socket
import struct
import sys
from dataclasses import dataclass

# struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; } -- eight bytes, native byte order
INSTRUCTION = struct.Struct("=HBBI")

# classic BPF opcodes (linux/bpf_common.h): class | size | mode, or class | op | source
LD_W_ABS = 0x00 | 0x00 | 0x20   # BPF_LD | BPF_W | BPF_ABS: A = 32-bit word at offset k of seccomp_data
JEQ_K = 0x05 | 0x10 | 0x00      # BPF_JMP | BPF_JEQ | BPF_K: pc += (A == k) ? jt : jf
JGE_K = 0x05 | 0x30 | 0x00      # BPF_JMP | BPF_JGE | BPF_K: pc += (A >= k) ? jt : jf
RET_K = 0x06                    # BPF_RET | BPF_K: the action k

# seccomp actions (linux/seccomp.h); ERRNO's low 16 bits are the errno the syscall returns
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
OFFSET_NR = 0
OFFSET_ARCH = 4
OFFSET_ARGS = 16

X32_SYSCALL_BIT = 0x40000000
IO_URING = (425, 426, 427)  # io_uring_setup, io_uring_enter, io_uring_register: one number on every arch


class SeccompUnavailable(RuntimeError):
    """No filter is known for this machine; ``str()`` says which."""


@dataclass(frozen=True)
class Architecture:
    """What the filter needs to know of one syscall ABI."""

    audit_arch: int        # AUDIT_ARCH_* as the kernel reports it in seccomp_data.arch
    socket: int            # the number of socket(2)
    little_endian: bool = True
    x32_bit: bool = False  # numbers with bit 30 set belong to another ABI (x86_64's x32)


ARCHITECTURES = {
    "x86_64": Architecture(audit_arch=0xC000003E, socket=41, x32_bit=True),
    "aarch64": Architecture(audit_arch=0xC00000B7, socket=198),
}


def _assemble(program: list) -> bytes:
    """Encode ``(code, k, jt_label, jf_label)`` / ``("label", name)`` items; jumps are forward, by label."""
    labels, index = {}, 0
    for item in program:
        if item[0] == "label":
            labels[item[1]] = index
        else:
            index += 1
    encoded, pc = [], 0
    for item in program:
        if item[0] == "label":
            continue
        code, k, true, false = item
        offsets = [0 if target is None else labels[target] - pc - 1 for target in (true, false)]
        if not all(0 <= offset <= 255 for offset in offsets):
            raise ValueError(f"jump out of range at instruction {pc}")
        encoded.append(INSTRUCTION.pack(code, offsets[0], offsets[1], k))
        pc += 1
    return b"".join(encoded)


def network_filter(machine: str) -> bytes:
    """The program for ``machine`` (``platform.machine()``): UNIX sockets only, no io_uring, one ABI."""
    arch = ARCHITECTURES.get(machine)
    if arch is None:
        raise SeccompUnavailable(f"network 'none' needs a seccomp filter, and jkg has none for {machine} "
                                 f"(known: {', '.join(sorted(ARCHITECTURES))}); use network 'loopback'")
    if arch.little_endian != (sys.byteorder == "little"):  # seccomp_data is in the machine's own byte order
        raise SeccompUnavailable(f"the {machine} filter is for the other byte order")
    # args[0] is a 64-bit slot; socket's domain is an int, so the kernel reads only its low 32 bits
    domain = OFFSET_ARGS + (0 if arch.little_endian else 4)
    program = [
        # Numbers mean something only in the native table: a call through another one is killed.
        (LD_W_ABS, OFFSET_ARCH, None, None),
        (JEQ_K, arch.audit_arch, None, "kill"),
        (LD_W_ABS, OFFSET_NR, None, None),
    ]
    if arch.x32_bit:  # x32 shares AUDIT_ARCH_X86_64; only bit 30 of the number tells it apart
        program.append((JGE_K, X32_SYSCALL_BIT, "kill", None))
    program += [
        (JEQ_K, arch.socket, "domain", None),
        # io_uring can open sockets itself (IORING_OP_SOCKET): behave as a kernel without it
        *[(JEQ_K, number, "nosys", None) for number in IO_URING],
        (RET_K, RET_ALLOW, None, None),
        ("label", "domain"),
        (LD_W_ABS, domain, None, None),
        (JEQ_K, socket.AF_UNIX, "allow", None),
        (JEQ_K, socket.AF_NETLINK, "netlink", None),
        (RET_K, RET_ERRNO | errno.EAFNOSUPPORT, None, None),
        # getifaddrs() fails with socket's errno; libzmq (binding tcp://127.0.0.1, as ipykernel's
        # subprocess-output pipe does) aborts the process on any errno but EOPNOTSUPP or EINVAL there
        ("label", "netlink"),
        (RET_K, RET_ERRNO | errno.EOPNOTSUPP, None, None),
        ("label", "nosys"),
        (RET_K, RET_ERRNO | errno.ENOSYS, None, None),
        ("label", "kill"),
        (RET_K, RET_KILL_PROCESS, None, None),
        ("label", "allow"),
        (RET_K, RET_ALLOW, None, None),
    ]
    return _assemble(program)


def host_network_filter() -> bytes:
    """The program for the machine jkg runs on (:class:`SeccompUnavailable` where none is known)."""
    return network_filter(platform.machine())
