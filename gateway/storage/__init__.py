"""Storage: SQLite by default (zero set-up), PostgreSQL for many replicas.

One SQLAlchemy async engine per process; every feature declares its tables on
``gateway.storage.schema.metadata`` and its schema changes in ``migrations.MIGRATIONS``.
"""

from gateway.storage.database import Database, open_database

__all__ = ["Database", "open_database"]
