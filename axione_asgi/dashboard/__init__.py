"""The usage page: one static HTML file and the JSON it reads."""

from axione_asgi.dashboard.routes import DASHBOARD_PATH, HISTORY_PATH, DashboardRoutes

__all__ = ["DASHBOARD_PATH", "HISTORY_PATH", "DashboardRoutes"]
