"""The systemd sandbox that the agent's and the proxy's service units share.

One text, so that a hardening change reaches both units (``tests/test_systemd_units.py`` scores
each with ``systemd-analyze security``). It is a fragment of a ``str.format`` template: the
unit supplies ``{state_dir}``, the one folder either service may write.
"""

from __future__ import annotations

__all__ = ["SANDBOX"]

SANDBOX = """\
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={state_dir}
# Needed for the namespaces below in an unprivileged user manager.
PrivateUsers=yes
PrivateDevices=yes
PrivateMounts=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
ProtectClock=yes
ProtectHostname=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
ProtectProc=invisible
ProcSubset=pid
KeyringMode=private
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
"""
