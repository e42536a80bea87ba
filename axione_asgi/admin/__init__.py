"""The operator side: the key and usage service shared by the CLI and the admin API."""

from axione_asgi.admin.service import AdminService, KeyNotFound, key_dict

__all__ = ["AdminService", "KeyNotFound", "key_dict"]
