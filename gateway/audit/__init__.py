"""The audit log: who changed what that can alter traffic or access, as a hash chain."""

from gateway.audit.log import Actor, AuditEntry, AuditLog, ChainBreak

__all__ = ["Actor", "AuditEntry", "AuditLog", "ChainBreak"]
