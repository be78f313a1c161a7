"""The demo and admin pages, and the browser JS client (`/static/preview-client.js`)."""

from midori_preview.web.routes import mount_web

__all__ = ["mount_web"]
