"""Cost reports for finance: grouped ledger queries, their CSV/JSON/table forms, and the page.

The CLI (``gateway report costs``), the admin API (``GET /admin/reports/costs``) and the
``/reports`` page are thin shells over ``cost_report``; the page's HTTP handlers live in
``gateway.reports.page`` and are only imported by the admin app.
"""

from gateway.reports.costs import DIMENSIONS, CostLine, CostQuery, CostReport, Period, cost_report, parse_by
from gateway.reports.formats import exact_usd, from_json_dict, money, to_csv, to_json, to_json_dict, to_table

__all__ = [
    "DIMENSIONS",
    "CostLine",
    "CostQuery",
    "CostReport",
    "Period",
    "cost_report",
    "exact_usd",
    "from_json_dict",
    "money",
    "parse_by",
    "to_csv",
    "to_json",
    "to_json_dict",
    "to_table",
]
