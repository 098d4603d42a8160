"""E-mail addresses: ``local@domain.tld``."""

from __future__ import annotations

import re

EMAIL = ("email", re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"), None, ("@",))
