"""Kernels in a bubblewrap sandbox: the walls between a tenant's code and everything else.

One module per job: :mod:`.settings` (what the operator asked for, pure),
:mod:`.argv` (the bwrap command line, pure), :mod:`.host` (what this machine
offers: bwrap, namespaces, cgroups), :mod:`.limits` (cgroups or rlimits),
:mod:`.workspace` (per-kernel directories and identities) and
:mod:`.provisioner` (the jupyter_client provisioner that puts them together).
See docs/isolation.md for the threat model.
"""
