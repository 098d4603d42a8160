"""Stage 1, authenticate: a team's API key becomes a ``Principal`` with roles."""

from gateway.auth.keys import ROLES, CreatedKey, KeyRecord, KeyStore, Principal
from gateway.auth.stage import Authenticate, bearer_token

__all__ = ["ROLES", "Authenticate", "CreatedKey", "KeyRecord", "KeyStore", "Principal", "bearer_token"]
